"""VReID-XFD leaderboard submission CSV: write, check against the data folders, score.

Format (one row per query tracklet)::

    row_id,case,query_tracklet,ranked_gallery_tracklets
    1,Case 1: Aerial to Ground,0001_3,0007_12 0001_5 ...

``row_id`` runs 1..N across the cases, which come in the order 1, 2, 3 with the exact names of
``utils.protocol.CASE_NAMES``; within a case, queries are sorted by (PID folder as an int,
tracklet name as a plain string: ``utils.protocol.submission_row_key``), the order of ``CaseSplit.query``; ``ranked_gallery_tracklets``
is the whole gallery of that case, tracklet folder names separated by single spaces, best first.

Command line::

    python -m utils.submission check CSV --root DATA_ROOT   # exit status 1 when problems are found
    python -m utils.submission score CSV [--json OUT.json]  # the challenge scorer's metrics

``score`` follows the challenge's released scorer (``calculate_metrics_from_csv.py``): pid and
tracklet id are read as integers from ``{pid}_{tid}`` names (``utils.protocol.split_tracklet_name``:
``7_3`` and ``0007_03`` are the same tracklet); junk = same pid and same tid (skipped); good = same
pid, another tid; an entry of another identity is never junk; queries without a good entry are left
out of the means; AP by the trapezoid rule; mAP, R1, R5, R10, R20 per case and mAP-3 pooled over all
scored queries (``utils.metrics.pool_cases``, as evaluation pools them). Its per-query AP is an
independent per-row implementation; ``tests/test_submission.py`` checks it and ``utils.metrics.evaluate_ranking(junk_rule="tracklet", ap_mode="trapezoid")`` against a loop
written from that rule.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections import Counter
from typing import Iterable, Iterator, Sequence

import numpy as np

from utils.protocol import (CASE_BY_NAME, CASE_FOLDERS, CASE_NAMES, CASE_PARTS, EXPECTED_LAYOUT, csv_unsafe_reason,
                            good_and_junk, is_ascii_int, split_tracklet_name, submission_row_key)
from utils.fileio import WriteFailure, atomic_write, write_text_atomic

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("row_id", "case", "query_tracklet", "ranked_gallery_tracklets")
SCORE_RANKS = (1, 5, 10, 20)
_MAX_PROBLEMS_PER_KIND = 20   # keep a broken file's report readable


def _csv_field_limit() -> None:
    """A row lists the whole gallery: lift the csv module's 128 kB field limit."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


# ----------------------------------------------------------------------------- writing
def submission_rows(case: int, query_names: Sequence[str], gallery_names: Sequence[str],
                    ranking) -> Iterator[tuple[int, str, list[str]]]:
    """Rows for ``write_submission`` from a ranking matrix.

    ranking (Q, G) gallery indices best first (``utils.metrics.rank_gallery``); query_names (Q,)
    in CSV order; gallery_names (G,). Yields (case, query_name, ranked gallery names).
    """
    ranking = np.asarray(ranking)
    names = np.asarray(list(gallery_names), dtype=object)
    if ranking.ndim != 2 or ranking.shape != (len(query_names), len(names)):
        raise ValueError(f"Case {case}: ranking must be (num_queries, num_gallery) = ({len(query_names)}, "
                         f"{len(names)}), got {ranking.shape}; the submission lists the whole gallery per query")
    for query_name, order in zip(query_names, ranking):
        yield case, query_name, names[order].tolist()


def write_submission(path: str, rows: Iterable[tuple[int, str, Sequence[str]]]) -> int:
    """Write the challenge CSV atomically (``utils.fileio.atomic_write``: temp file, then os.replace).

    rows: (case number 1..3, query tracklet name, ranked gallery tracklet names best first), case by
    case in the order 1, 2, 3 and, within a case, in CSV query order. Returns the number of rows.
    """
    count = 0

    def write(tmp_path: str) -> None:
        nonlocal count
        with open(tmp_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            previous_case = 0
            for case, query_name, ranked in rows:
                if case not in CASE_NAMES:
                    raise ValueError(f"Submission row {count + 1}: unknown case {case!r}; cases are {sorted(CASE_NAMES)}")
                if case < previous_case:
                    raise ValueError(f"Submission row {count + 1}: case {case} after case {previous_case}; "
                                     f"write the cases in the order 1, 2, 3")
                for name in (query_name, *ranked):
                    reason = csv_unsafe_reason(name)
                    if reason:
                        raise ValueError(f"Submission row {count + 1} (case {case}): tracklet name {name!r} {reason}, "
                                         f"which the CSV format cannot carry")
                previous_case = case
                count += 1
                writer.writerow((count, CASE_NAMES[case], query_name, " ".join(ranked)))

    atomic_write(path, write)   # temp file, fsync, rename; a failed write is a WriteFailure naming path
    logger.info("Wrote %d submission rows to %s", count, path)
    return count


# ----------------------------------------------------------------------------- reading
def read_submission(csv_path: str) -> list[dict]:
    """Rows of a submission CSV as dicts with the CSV_COLUMNS keys (all strings)."""
    _csv_field_limit()
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"Submission file not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != CSV_COLUMNS:
            raise ValueError(f"{csv_path}: header must be {','.join(CSV_COLUMNS)}, got {header}")
        rows = []
        for line_number, fields in enumerate(reader, start=2):
            if len(fields) != len(CSV_COLUMNS):
                raise ValueError(f"{csv_path} line {line_number}: expected {len(CSV_COLUMNS)} fields, got {len(fields)}")
            rows.append(dict(zip(CSV_COLUMNS, fields), line=line_number))
    return rows


# ----------------------------------------------------------------------------- checking
def scan_case_folders(root: str) -> dict[int, tuple[list[str], list[str]]]:
    """{case: (query tracklet names in CSV order, gallery tracklet names)} for the case folders
    found under ``root`` (``root/<case folder>/{query,gallery}/<PID>/<tracklet>/``)."""
    cases = {}
    for case, folder in sorted(CASE_FOLDERS.items()):
        case_dir = os.path.join(root, folder)
        if not os.path.isdir(case_dir):
            continue
        parts = []
        for part in CASE_PARTS:
            part_dir = os.path.join(case_dir, part)
            if not os.path.isdir(part_dir):
                raise FileNotFoundError(f"Missing {part_dir}: every case folder holds query/ and gallery/. "
                                        f"{EXPECTED_LAYOUT}")
            entries = []
            for pid_folder in sorted(os.listdir(part_dir)):
                pid_dir = os.path.join(part_dir, pid_folder)
                if pid_folder.startswith(".") or not os.path.isdir(pid_dir):
                    continue
                if not is_ascii_int(pid_folder):
                    raise ValueError(f"PID folder {pid_dir!r} is not an integer. {EXPECTED_LAYOUT}")
                entries += [(int(pid_folder), name) for name in os.listdir(pid_dir)
                            if not name.startswith(".") and os.path.isdir(os.path.join(pid_dir, name))]
            entries.sort(key=lambda e: submission_row_key(*e))
            parts.append([name for _, name in entries])
        cases[case] = (parts[0], parts[1])
    return cases


class _Problems:
    """Problem messages, at most _MAX_PROBLEMS_PER_KIND per kind plus a count of the rest."""

    def __init__(self):
        self.messages: list[str] = []
        self.overflow: dict[str, int] = {}
        self.per_kind: dict[str, int] = {}

    def add(self, kind: str, message: str) -> None:
        self.per_kind[kind] = self.per_kind.get(kind, 0) + 1
        if self.per_kind[kind] <= _MAX_PROBLEMS_PER_KIND:
            self.messages.append(message)
        else:
            self.overflow[kind] = self.overflow.get(kind, 0) + 1

    def result(self) -> list[str]:
        return self.messages + [f"... and {n} more problems of kind '{kind}'" for kind, n in self.overflow.items()]


def check_submission(csv_path: str, root: str) -> list[str]:
    """Problems of a submission CSV against the data folders under ``root``; [] = valid.

    Checks: header; row_id runs 1..N; case names exact; every query tracklet of every case found
    on disk present once, in CSV order (cases 1, 2, 3; queries by (PID, tracklet name)); each row
    lists every gallery tracklet of its case exactly once, separated by single spaces.
    """
    problems = _Problems()
    try:
        expected_cases = scan_case_folders(root)
    except (OSError, ValueError) as exc:
        return [str(exc)]
    if not expected_cases:
        return [f"No case folders ({', '.join(CASE_FOLDERS.values())}) under {root}; pass the data root with --root"]
    try:
        rows = read_submission(csv_path)
    except (OSError, ValueError) as exc:
        return [str(exc)]

    for case, (_, gallery) in expected_cases.items():
        if len(set(gallery)) != len(gallery):
            duplicates = sorted(n for n, k in Counter(gallery).items() if k > 1)[:5]
            problems.add("data", f"{CASE_FOLDERS[case]}/gallery: tracklet names occur under several PIDs "
                                 f"({', '.join(duplicates)}); the CSV cannot tell them apart")
    expected = [(case, name) for case, (queries, _) in expected_cases.items() for name in queries]
    gallery_sets = {case: set(gallery) for case, (_, gallery) in expected_cases.items()}
    for index, row in enumerate(rows):
        where = f"line {row['line']}"
        if row["row_id"] != str(index + 1):
            problems.add("row_id", f"{where}: row_id is {row['row_id']!r}, expected {index + 1} (row_id runs 1..N)")
        case = CASE_BY_NAME.get(row["case"])
        if case is None:
            problems.add("case", f"{where}: case {row['case']!r} is not one of {list(CASE_NAMES.values())}")
            continue
        if index < len(expected) and (case, row["query_tracklet"]) != expected[index]:
            exp_case, exp_name = expected[index]
            problems.add("order", f"{where}: expected query {exp_name!r} of {CASE_NAMES[exp_case]!r}, "
                                  f"got {row['query_tracklet']!r} of {row['case']!r}")
        if case not in gallery_sets:
            problems.add("case", f"{where}: {row['case']!r} has no folder {CASE_FOLDERS[case]} under {root}")
            continue
        ranked = row["ranked_gallery_tracklets"].split(" ")
        gallery = gallery_sets[case]
        if "" in ranked:
            problems.add("spacing", f"{where}: ranked_gallery_tracklets has empty entries (separate names by single spaces)")
        ranked_set = set(ranked) - {""}
        missing, unknown = gallery - ranked_set, ranked_set - gallery
        duplicates = len(ranked) - ranked.count("") - len(ranked_set)
        if missing or unknown or duplicates:
            detail = []
            if missing:
                detail.append(f"{len(missing)} gallery tracklets missing (e.g. {sorted(missing)[0]!r})")
            if unknown:
                detail.append(f"{len(unknown)} names not in the {CASE_FOLDERS[case]} gallery (e.g. {sorted(unknown)[0]!r})")
            if duplicates:
                detail.append(f"{duplicates} repeated names")
            problems.add("gallery", f"{where} (query {row['query_tracklet']!r}): " + "; ".join(detail))

    seen = {(CASE_BY_NAME.get(r["case"]), r["query_tracklet"]) for r in rows}
    for case, name in expected:
        if (case, name) not in seen:
            problems.add("missing", f"query {name!r} of {CASE_NAMES[case]!r} has no row")
    if len(rows) != len(expected):
        problems.add("count", f"{len(rows)} rows, expected {len(expected)} (one per query tracklet of "
                              f"cases {sorted(expected_cases)})")
    return problems.result()


# ----------------------------------------------------------------------------- scoring
def score_submission(csv_path: str, ranks: Sequence[int] = SCORE_RANKS) -> dict:
    """The challenge scorer's metrics of a submission CSV, from tracklet names alone.

    -> {case (int): {"mAP", "R1", "R5", "R10", "R20", "num_queries", "num_valid"}, ...,
        "overall": {"mAP-3" (pooled over all valid queries), "mAP_mean_over_cases", "num_valid"}}.
    Metrics are nan (and num_valid 0) for a case whose query identities never occur in its ranked
    lists, e.g. the anonymised public test set.
    """
    from utils.metrics import pool_cases   # here, not at the top: `check` runs without importing torch

    rows = read_submission(csv_path)
    by_case: dict[int, list[dict]] = {}
    for row in rows:
        if row["case"] not in CASE_BY_NAME:
            raise ValueError(f"{csv_path} line {row['line']}: unknown case {row['case']!r}")
        by_case.setdefault(CASE_BY_NAME[row["case"]], []).append(row)

    results: dict = {}
    per_query: dict[int, dict] = {}   # {case: {"AP", "R1_hit"}} of the queries with a good entry
    for case in sorted(by_case):
        code_of: dict[str, int] = {}
        pid_codes: dict[int, int] = {}
        tid_codes: dict[int, int] = {}
        gallery_pid: list[int] = []
        gallery_tid: list[int] = []

        def split(name: str, line: int) -> tuple[int, int]:
            try:
                return split_tracklet_name(name)
            except ValueError as exc:
                raise ValueError(f"{csv_path} line {line}: {exc}") from None

        def code(name: str, line: int) -> int:
            if name not in code_of:
                pid, tid = split(name, line)
                code_of[name] = len(code_of)
                gallery_pid.append(pid_codes.setdefault(pid, len(pid_codes)))
                gallery_tid.append(tid_codes.setdefault(tid, len(tid_codes)))
            return code_of[name]

        aps, first_hits = [], []
        pid_array = tid_array = np.zeros(0, dtype=np.int64)
        for row in by_case[case]:
            q_pid, q_tid = split(row["query_tracklet"], row["line"])
            # str.split() as the released scorer does: any run of whitespace separates names.
            codes = np.fromiter((code(n, row["line"]) for n in row["ranked_gallery_tracklets"].split()), dtype=np.int64)
            if len(pid_array) != len(gallery_pid):   # new names seen: refresh the lookup arrays
                pid_array = np.asarray(gallery_pid, dtype=np.int64)
                tid_array = np.asarray(gallery_tid, dtype=np.int64)
            good, junk = good_and_junk(pid_codes.get(q_pid, -1), tid_codes.get(q_tid, -1),
                                       pid_array[codes], tid_array[codes])
            hit_ranks = np.flatnonzero(good[~junk]).astype(np.float64)  # 0-based ranks among non-junk entries
            if hit_ranks.size == 0:
                continue                                                # no good entry: left out of the means
            hit_index = np.arange(hit_ranks.size, dtype=np.float64)
            left = np.where(hit_ranks > 0, hit_index / np.maximum(hit_ranks, 1.0), 1.0)
            aps.append(float(((left + (hit_index + 1.0) / (hit_ranks + 1.0)) / 2.0).sum() / hit_ranks.size))
            first_hits.append(hit_ranks[0])
        num_valid = len(aps)
        metrics = {"mAP": float(np.mean(aps)) if aps else float("nan")}
        for k in ranks:
            metrics[f"R{k}"] = float(np.mean(np.asarray(first_hits) < k)) if aps else float("nan")
        metrics.update(num_queries=len(by_case[case]), num_valid=num_valid)
        results[case] = metrics
        per_query[case] = {"AP": np.asarray(aps, dtype=np.float64), "R1_hit": np.asarray(first_hits) == 0}
    pooled = pool_cases(per_query)
    results["overall"] = {key: pooled[key] for key in ("mAP-3", "mAP_mean_over_cases", "num_valid")}
    return results


def format_scores(scores: dict) -> str:
    """A text table of ``score_submission`` results (percentages)."""
    lines = [f"{'case':28s} {'queries':>8s} {'scored':>7s} {'mAP':>7s} {'R1':>7s} {'R5':>7s} {'R10':>7s} {'R20':>7s}"]
    for case in sorted(k for k in scores if isinstance(k, int)):
        m = scores[case]
        values = " ".join(f"{100 * m[key]:7.2f}" for key in ("mAP", "R1", "R5", "R10", "R20"))
        lines.append(f"{CASE_NAMES[case]:28s} {m['num_queries']:8d} {m['num_valid']:7d} {values}")
    overall = scores.get("overall", {})
    if overall:
        lines.append(f"mAP-3 (pooled over {overall['num_valid']} queries): {100 * overall['mAP-3']:.2f}; "
                     f"mean of the case mAPs: {100 * overall['mAP_mean_over_cases']:.2f}")
        if overall["num_valid"] == 0:
            lines.append("No query identity occurs in its ranked list: no ground truth (anonymised test set?), "
                         "metrics unavailable.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.submission", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="verify a CSV against the case folders of a data root")
    check.add_argument("csv")
    check.add_argument("--root", required=True, help="data root holding case1_aerial_to_ground/ etc.")
    score = sub.add_parser("score", help="the challenge scorer's metrics from tracklet names")
    score.add_argument("csv")
    score.add_argument("--json", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    if args.command == "check":
        problems = check_submission(args.csv, args.root)
        if problems:
            print(f"{args.csv}: {len(problems)} problem(s)")
            for problem in problems:
                print("  " + problem)
            return 1
        print(f"{args.csv}: OK ({len(read_submission(args.csv))} rows)")
        return 0
    try:
        scores = score_submission(args.csv)
        print(format_scores(scores))
        if args.json:
            write_text_atomic(args.json, json.dumps({str(k): v for k, v in scores.items()}, indent=2))
    except (ValueError, FileNotFoundError, WriteFailure) as exc:   # the message names the file and the fix
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
