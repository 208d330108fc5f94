"""utils/submission.py: exact CSV format, checker, scorer == evaluate_ranking (same rules), CLI."""
import csv
import math
import os

import numpy as np
import pytest

from datasets.detreidx import CASE_FOLDERS, CASE_NAMES
from utils.metrics import evaluate_ranking, rank_gallery
from utils.submission import (check_submission, main, read_submission, scan_case_folders,
                              score_submission, submission_rows, write_submission)


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
