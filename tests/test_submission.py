"""The submission CSV (utils/submission.py, ``python -m utils.submission check|score``): exact format, query rows
in (PID, name as a string) order, the checker, the scorer == evaluate_ranking (same rules), the command line; and
the scorer and evaluate_ranking against an oracle written from the released scorer's rule (see that section)."""
import csv
import json
import math
import os

import numpy as np
import pytest

from tests.helpers.cli import run_cli
from utils.metrics import evaluate_ranking, rank_gallery
from utils.protocol import CASE_FOLDERS, CASE_NAMES
from utils.submission import (
    check_submission,
    main,
    read_submission,
    scan_case_folders,
    score_submission,
    submission_rows,
    write_submission,
)


def make_case_folders(root, seed=0):
    """Empty tracklet folders root/<case>/{query,gallery}/<PID>/<PID>_<tid>/ for the three cases.
    Returns {case: (query names in CSV order, query pids, gallery names, gallery pids)}."""
    rng = np.random.default_rng(seed)
    layout = {}
    next_tid = 1
    for case, folder in CASE_FOLDERS.items():
        parts = {}
        for part, num_pids in (("query", 4), ("gallery", 6)):
            entries = []
            for pid in range(1, num_pids + 1):
                for _ in range(int(rng.integers(1, 4))):
                    name = f"{pid:04d}_{next_tid}"
                    next_tid += 1
                    os.makedirs(os.path.join(root, folder, part, f"{pid:04d}", name))
                    entries.append((pid, name))
            parts[part] = entries
        if case == 3:   # case 3 (A->A): a query tracklet also sits in the gallery (tracklet-rule junk)
            pid, name = parts["query"][0]
            os.makedirs(os.path.join(root, folder, "gallery", f"{pid:04d}", name))
            parts["gallery"].append((pid, name))
        query = sorted(parts["query"], key=lambda e: (e[0], int(e[1].split("_")[1])))
        layout[case] = ([n for _, n in query], [p for p, _ in query],
                        [n for _, n in parts["gallery"]], [p for p, _ in parts["gallery"]])
    return layout


def write_random_submission(path, layout, seed=0):
    rng = np.random.default_rng(seed)
    rankings, distmats = {}, {}
    rows = []
    for case, (q_names, _, g_names, _) in layout.items():
        dist = rng.integers(0, 4, (len(q_names), len(g_names))).astype(np.float32)   # many ties
        distmats[case] = dist
        rankings[case] = rank_gallery(dist)
        rows += list(submission_rows(case, q_names, g_names, rankings[case]))
    write_submission(path, rows)
    return distmats


@pytest.fixture()
def data_root(tmp_path):
    root = tmp_path / "data"
    return str(root), make_case_folders(str(root))


def test_written_csv_has_the_exact_format_and_passes_check(tmp_path, data_root):
    root, layout = data_root
    path = str(tmp_path / "sub.csv")
    write_random_submission(path, layout)
    with open(path, newline="") as f:
        lines = f.read().split("\n")
    assert lines[0] == "row_id,case,query_tracklet,ranked_gallery_tracklets"
    assert lines[1].startswith("1,Case 1: Aerial to Ground,0001_")
    rows = read_submission(path)
    assert [int(r["row_id"]) for r in rows] == list(range(1, len(rows) + 1))
    assert [r["case"] for r in rows] == [CASE_NAMES[c] for c in layout for _ in layout[c][0]]
    assert [r["query_tracklet"] for r in rows] == [n for c in layout for n in layout[c][0]]
    assert check_submission(path, root) == []
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_query_order_is_pid_then_tracklet_name_as_a_string(tmp_path):
    """The organisers' baseline order (PID as an int, then the name as a plain string), not natural order."""
    for pid, name in [(12, "0012_1"), (3, "0003_10"), (3, "0003_2"), (12, "0012_0")]:
        os.makedirs(tmp_path / CASE_FOLDERS[2] / "query" / f"{pid:04d}" / name)
    os.makedirs(tmp_path / CASE_FOLDERS[2] / "gallery")
    queries, gallery = scan_case_folders(str(tmp_path))[2]
    assert queries == ["0003_10", "0003_2", "0012_0", "0012_1"] and gallery == []


def test_submission_rows_sort_tracklet_names_as_strings(tmp_path):
    for part, names in (("query", ["0024_987", "0024_5453", "0003_12"]), ("gallery", ["0024_1"])):
        for name in names:
            (tmp_path / "case1_aerial_to_ground" / part / name[:4] / name).mkdir(parents=True)
    queries, _ = scan_case_folders(str(tmp_path))[1]
    assert queries == ["0003_12", "0024_5453", "0024_987"]   # PID as int, then the name as a string


def _rewrite(path, mutate):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    mutate(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize("mutation,expected", [
    (lambda rows: rows.__setitem__(slice(1, 3), [rows[2], rows[1]]), "row_id"),
    (lambda rows: rows[1].__setitem__(0, "7"), "row_id runs"),
    (lambda rows: rows[1].__setitem__(1, "Case 1: Aerial to ground"), "is not one of"),
    (lambda rows: rows[1].__setitem__(3, rows[1][3].rsplit(" ", 1)[0]), "missing"),
    (lambda rows: rows[1].__setitem__(3, rows[1][3] + " " + rows[1][3].split(" ")[0]), "repeated"),
    (lambda rows: rows[1].__setitem__(3, rows[1][3].replace(" ", "  ", 1)), "single spaces"),
    (lambda rows: rows[1].__setitem__(3, rows[1][3] + " 9999_1"), "not in the"),
    (lambda rows: rows.pop(), "has no row"),
])
def test_check_reports_each_kind_of_problem(tmp_path, data_root, mutation, expected):
    root, layout = data_root
    path = str(tmp_path / "sub.csv")
    write_random_submission(path, layout)
    _rewrite(path, mutation)
    problems = check_submission(path, root)
    assert any(expected in p for p in problems), problems


def test_check_wants_every_case_found_on_disk(tmp_path, data_root):
    root, layout = data_root
    path = str(tmp_path / "sub.csv")
    q_names, _, g_names, _ = layout[1]
    write_submission(path, submission_rows(1, q_names, g_names, np.tile(np.arange(len(g_names)), (len(q_names), 1))))
    problems = check_submission(path, root)
    assert any("has no row" in p for p in problems) and any("rows, expected" in p for p in problems)


def test_score_equals_evaluate_ranking_with_the_same_rules(tmp_path, data_root):
    _, layout = data_root
    path = str(tmp_path / "sub.csv")
    distmats = write_random_submission(path, layout, seed=3)
    scores = score_submission(path)
    pooled = []
    for case, (q_names, q_pids, g_names, g_pids) in layout.items():
        expected = evaluate_ranking(distmats[case], q_pids, g_pids, q_names=q_names, g_names=g_names,
                                    junk_rule="tracklet", ap_mode="trapezoid")
        assert expected["num_valid"] > 0
        assert scores[case]["num_valid"] == expected["num_valid"]
        assert scores[case]["num_queries"] == len(q_names)
        for key in ("mAP", "R1", "R5", "R10", "R20"):
            assert abs(scores[case][key] - expected[key]) < 1e-9, (case, key)
        pooled += [a for a in expected["AP"] if not math.isnan(a)]
    assert abs(scores["overall"]["mAP-3"] - np.mean(pooled)) < 1e-9


def test_score_without_ground_truth_gives_nan_and_says_so(tmp_path, capsys):
    path = str(tmp_path / "anon.csv")
    write_submission(path, [(1, "0001_1", ["0002_5", "0003_6"]), (2, "0004_2", ["0005_7"])])
    scores = score_submission(path)
    assert scores[1]["num_valid"] == 0 and math.isnan(scores[1]["mAP"])
    assert main(["score", path]) == 0
    assert "metrics unavailable" in capsys.readouterr().out


def test_write_is_atomic_and_rejects_bad_rows(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("old content\n")
    with pytest.raises(ValueError, match="space"):
        write_submission(str(path), [(1, "0001_1", ["0002_5"]), (1, "0001_2", ["bad name"])])
    with pytest.raises(ValueError, match="order 1, 2, 3"):
        write_submission(str(path), [(2, "0001_1", ["0002_5"]), (1, "0001_2", ["0002_5"])])
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["sub.csv"]


def test_cli_check_exit_status(tmp_path, data_root, capsys):
    root, layout = data_root
    path = str(tmp_path / "sub.csv")
    write_random_submission(path, layout)
    assert main(["check", path, "--root", root]) == 0
    _rewrite(path, lambda rows: rows.pop())
    assert main(["check", path, "--root", root]) == 1
    assert "problem" in capsys.readouterr().out
    out_json = str(tmp_path / "scores.json")
    assert main(["score", path, "--json", out_json]) == 0 and os.path.isfile(out_json)


# ----------------------------------------------------------------------------- the released scorer's rule
# The challenge scorer's rule, written out as a plain loop (the oracle below), against ``utils.submission score``
# and ``utils.metrics.evaluate_ranking(junk_rule="tracklet")`` on random submission CSVs.
#
# The oracle follows the released ``calculate_metrics_from_csv.py`` as method.md states it, not our code: a
# tracklet name ``{pid}_{tid}`` is read as two integers; for a query, a ranked entry is junk when it has the
# query's pid and the query's tid, good when it has the query's pid and another tid (an entry of another identity
# is never junk, even with the query's tid); junk entries are removed; with the good entries at 0-based ranks
# r_0 < r_1 < ... among the rest, AP = sum_i ((i / r_i if r_i > 0 else 1) + (i + 1) / (r_i + 1)) / 2 / n_good;
# R-k = first good rank < k; queries without a good entry are left out of the means. The random CSVs repeat tids
# across identities, write the same ids padded and unpadded (``7_3`` / ``0007_03``) and hold queries without any
# good entry.
RANKS = (1, 5, 10, 20)


def parse(name):
    parts = name.split("_")
    return int(parts[0]), int(parts[1])


def oracle_query(query, ranked):
    """(AP, first good rank) of one row, or None when the query has no good entry."""
    q_pid, q_tid = parse(query)
    kept_good = []
    for name in ranked:
        pid, tid = parse(name)
        if pid == q_pid and tid == q_tid:
            continue                       # junk: the query's own tracklet
        kept_good.append(pid == q_pid)     # good: same identity, another tracklet
    n_good = sum(kept_good)
    if n_good == 0:
        return None
    ap, i = 0.0, 0
    for r, good in enumerate(kept_good):
        if good:
            old_precision = i / r if r > 0 else 1.0
            ap += (old_precision + (i + 1) / (r + 1)) / 2 / n_good
            i += 1
    return ap, kept_good.index(True)


def oracle_scores(rows):
    """rows: (case, query, ranked) -> {case: {"mAP", "R1", ..., "num_valid", "AP": [per row or None]}, "mAP-3"}."""
    out, pooled = {}, []
    for case in sorted({r[0] for r in rows}):
        per_row = [oracle_query(q, ranked) for c, q, ranked in rows if c == case]
        valid = [x for x in per_row if x is not None]
        entry = {"AP": [None if x is None else x[0] for x in per_row], "num_valid": len(valid),
                 "num_queries": len(per_row),
                 "mAP": sum(ap for ap, _ in valid) / len(valid) if valid else math.nan}
        for k in RANKS:
            entry[f"R{k}"] = sum(first < k for _, first in valid) / len(valid) if valid else math.nan
        out[case] = entry
        pooled += [ap for ap, _ in valid]
    out["mAP-3"] = sum(pooled) / len(pooled) if pooled else math.nan
    return out


def name(pid, tid, rng):
    """The same (pid, tid) written padded or not, at random."""
    return f"{pid:0{int(rng.integers(1, 5))}d}_{tid:0{int(rng.integers(1, 4))}d}"


def random_submission(seed):
    """rows (case, query, ranked gallery) of a random CSV; per case also the gallery names and, per
    row, the order of the gallery (indices), for evaluate_ranking."""
    rng = np.random.default_rng(seed)
    rows, cases = [], {}
    for case in (1, 2, 3):
        num_g = int(rng.integers(8, 40))
        g_pids = rng.integers(1, 7, num_g)
        g_tids = rng.integers(0, 6, num_g)              # few tids: they repeat across identities
        gallery = list(dict.fromkeys(name(p, t, rng) for p, t in zip(g_pids, g_tids)))
        # The same (pid, tid) under a second spelling: both are the query's own tracklet (junk) for it.
        p0, t0 = parse(gallery[0])
        gallery.append(f"{p0:06d}_{t0:05d}")
        queries = [name(int(p), int(t), rng) for p, t in zip(rng.integers(1, 9, 12), rng.integers(0, 6, 12))]
        queries.append(name(8, 1, rng))                 # pid 8 never in the gallery: no good entry
        queries.append(gallery[0])                      # shares the tid of entries of other identities
        lone_pid = 50 + case                            # its only gallery entries are its own tracklet
        gallery.append(f"{lone_pid}_7")
        queries.append(f"00{lone_pid}_007")
        orders = [rng.permutation(len(gallery)) for _ in queries]
        cases[case] = (queries, gallery, orders)
        rows += [(case, q, [gallery[j] for j in order]) for q, order in zip(queries, orders)]
    return rows, cases


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("row_id", "case", "query_tracklet", "ranked_gallery_tracklets"))
        for row_id, (case, query, ranked) in enumerate(rows, start=1):
            writer.writerow((row_id, CASE_NAMES[case], query, " ".join(ranked)))


def assert_close(got, expected, what):
    if math.isnan(expected):
        assert math.isnan(got), what
    else:
        assert abs(got - expected) <= 1e-9, f"{what}: {got} vs {expected}"


def test_random_problems_exercise_every_rule():
    """The generated CSVs really hold what the oracle comparison is meant to cover."""
    rows, cases = random_submission(0)
    names = [n for _, q, ranked in rows for n in (q, *ranked)]
    assert any(n.startswith("0") for n in names) and any(not n.startswith("0") for n in names)
    cross_identity_tid = sum(1 for _, q, ranked in rows for n in ranked
                             if parse(n)[1] == parse(q)[1] and parse(n)[0] != parse(q)[0])
    assert cross_identity_tid > 0
    expected = oracle_scores(rows)
    assert all(0 < expected[c]["num_valid"] < expected[c]["num_queries"] for c in (1, 2, 3))


@pytest.mark.parametrize("seed", range(6))
def test_score_and_evaluate_ranking_equal_the_released_rule(tmp_path, seed):
    rows, cases = random_submission(seed)
    expected = oracle_scores(rows)
    path = str(tmp_path / "sub.csv")
    write_csv(path, rows)

    scores = score_submission(path)
    for case in (1, 2, 3):
        for key in ("mAP", *(f"R{k}" for k in RANKS)):
            assert_close(scores[case][key], expected[case][key], f"score case {case} {key}")
        assert scores[case]["num_valid"] == expected[case]["num_valid"]
        assert scores[case]["num_queries"] == expected[case]["num_queries"]
    assert_close(scores["overall"]["mAP-3"], expected["mAP-3"], "score mAP-3")

    # The command line: same figures in its JSON.
    assert main(["score", path, "--json", str(tmp_path / "s.json")]) == 0
    written = json.loads((tmp_path / "s.json").read_text())
    for case in (1, 2, 3):
        assert_close(written[str(case)]["mAP"], expected[case]["mAP"], f"CLI case {case} mAP")

    # evaluate_ranking on distances that reproduce each row's ranking (distance = rank position).
    for case, (queries, gallery, orders) in cases.items():
        dist = np.empty((len(queries), len(gallery)))
        for q, order in enumerate(orders):
            dist[q, order] = np.arange(len(gallery))
        got = evaluate_ranking(dist, [parse(n)[0] for n in queries], [parse(n)[0] for n in gallery],
                               q_names=queries, g_names=gallery, junk_rule="tracklet", ap_mode="trapezoid")
        oracle_ap = np.array([np.nan if a is None else a for a in expected[case]["AP"]])
        np.testing.assert_allclose(got["AP"], oracle_ap, rtol=0, atol=1e-9, equal_nan=True)
        for key in ("mAP", *(f"R{k}" for k in RANKS)):
            assert_close(got[key], expected[case][key], f"evaluate_ranking case {case} {key}")
        assert got["num_valid"] == expected[case]["num_valid"]


@pytest.mark.slow
def test_score_command_line_prints_the_oracle_map(tmp_path):
    rows, _ = random_submission(42)
    expected = oracle_scores(rows)
    path = str(tmp_path / "sub.csv")
    write_csv(path, rows)
    done = run_cli("-m", "utils.submission", "score", path, "--json", str(tmp_path / "o.json"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{100 * expected['mAP-3']:.2f}" in done.stdout
    written = json.loads((tmp_path / "o.json").read_text())
    assert_close(written["overall"]["mAP-3"], expected["mAP-3"], "CLI mAP-3")


def test_other_identity_sharing_the_tid_is_not_junk():
    """The case that separated our old rule from the released scorer's, by hand."""
    # Query 1_5; ranked: 2_5 (other identity, same tid: a miss, not junk), 1_6 (good).
    got = evaluate_ranking(np.array([[0.0, 1.0]]), [1], [2, 1], q_names=["1_5"], g_names=["2_5", "1_6"])
    assert got["AP"][0] == pytest.approx((0.0 + 0.5) / 2) and got["first_hit_rank"][0] == 1
    # 0001_05 is the query's own tracklet 1_5 written padded: junk, so 1_6 is first.
    got = evaluate_ranking(np.array([[0.0, 1.0]]), [1], [1, 1], q_names=["1_5"], g_names=["0001_05", "1_6"])
    assert got["AP"][0] == 1.0 and got["first_hit_rank"][0] == 0


def test_score_names_the_file_and_line_of_an_unreadable_name(tmp_path, capsys):
    path = str(tmp_path / "sub.csv")
    write_csv(path, [(1, "1_2", ["1_3", "x_4"])])
    with pytest.raises(ValueError, match=r"sub\.csv line 2: Tracklet name 'x_4'"):
        score_submission(path)
    assert main(["score", path]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_score_splits_the_ranked_names_on_any_whitespace_as_the_released_scorer(tmp_path):
    """The released scorer reads the ranking column with str.split(): doubled spaces or a tab score the same
    as single spaces (the checker reports them; the scorer does not mis-read them as names)."""
    header = "row_id,case,query_tracklet,ranked_gallery_tracklets\n"
    single, loose = tmp_path / "single.csv", tmp_path / "loose.csv"
    single.write_text(header + f"1,{CASE_NAMES[1]},0001_1,0002_5 0001_3 0001_4\n", encoding="utf-8")
    loose.write_text(header + f"1,{CASE_NAMES[1]},0001_1,0002_5  0001_3\t0001_4 \n", encoding="utf-8")
    expected, got = score_submission(str(single)), score_submission(str(loose))
    assert got[1]["num_valid"] == 1 and got[1]["R1"] == expected[1]["R1"] == 0.0
    assert got[1]["mAP"] == expected[1]["mAP"] and got[1]["R5"] == expected[1]["R5"] == 1.0
