"""The VReID-XFD protocol in one place: case folders and names, the tracklet-name rule, junk rules.

The scanner (``datasets.detreidx``), the metrics (``utils.metrics``) and the submission checker and
scorer (``utils.submission``) all import these, so they cannot drift apart. This module depends on
nothing else of the project.

Facts (from the challenge's released ``calculate_metrics_from_csv.py`` and the DetReIDXV1 layout):

* case folders ``case1_aerial_to_ground``, ``case2_ground_to_aerial``, ``case3_aerial_to_aerial``,
  each with ``query/`` and ``gallery/``; the CSV's ``case`` column uses the exact names of
  ``CASE_NAMES``, in the order 1, 2, 3;
* a tracklet folder is named ``{pid}_{tid}``; the scorer reads both parts as integers;
* junk (``"tracklet"`` rule, the scorer's): a gallery entry with the query's pid *and* the query's
  tid; an entry of another identity is never junk. ``"camera"`` is the Market-1501 rule of the
  authors' in-process evaluator (same pid and same camera). Both are ``good_and_junk``, used by
  ``utils.metrics.evaluate_ranking`` and ``utils.submission.score_submission`` alike.

This module is stricter than the released script where that script would read a name loosely
(``int()`` accepts ``' 7'``, ``'+7'`` and Arabic-Indic digits such as ``'٣'``; ``split('_')``
ignores a third field): such names are refused with an error naming them, never scored differently.
"""
from __future__ import annotations

import re

CASE_FOLDERS = {1: "case1_aerial_to_ground", 2: "case2_ground_to_aerial", 3: "case3_aerial_to_aerial"}
CASE_NAMES = {1: "Case 1: Aerial to Ground", 2: "Case 2: Ground to Aerial", 3: "Case 3: Aerial to Aerial"}
CASE_BY_NAME = {name: case for case, name in CASE_NAMES.items()}
# (query view, gallery view) of each case: the case folder fixes the view of its tracklets.
CASE_VIEWS = {1: ("aerial", "ground"), 2: ("ground", "aerial"), 3: ("aerial", "aerial")}
CASE_PARTS = ("query", "gallery")
TRAIN_FOLDER = "train"
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")

JUNK_RULES = ("camera", "tracklet")
AP_MODES = ("trapezoid", "standard")

# Appended to every layout error: the structure the scanner expects, so the fix is evident.
EXPECTED_LAYOUT = (
    "Expected layout: ROOT/train/<PID>/<tracklet>/<frame>.jpg and "
    f"ROOT/{{{','.join(CASE_FOLDERS.values())}}}/{{query,gallery}}/<PID>/<tracklet>/<frame>.jpg, "
    "with integer PID folders (e.g. 0004)."
)

_ASCII_DIGITS_RE = re.compile(r"[0-9]+")
_NATURAL_SPLIT_RE = re.compile(r"([0-9]+)")
# Characters that would break a CSV row or the space-separated ranking column.
_CSV_UNSAFE_RE = re.compile(r"[\s,\"']")


def is_ascii_int(token: str) -> bool:
    """True for a non-empty run of ASCII digits only (``str.isdigit`` also accepts ``'²'``)."""
    return _ASCII_DIGITS_RE.fullmatch(token) is not None


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders ``frame_2`` before ``frame_10`` (equal to plain sorting for zero-padded
    numbers). Only ASCII digit runs are read as numbers."""
    return tuple(int(part) if is_ascii_int(part) else part for part in _NATURAL_SPLIT_RE.split(name))


def submission_row_key(pid: int, tracklet_name: str) -> tuple[int, str]:
    """Order of the query rows within a case of the submission CSV: PID as an integer, then the tracklet
    folder name as a plain string (``0024_5453`` before ``0024_987``), as the challenge organisers'
    baseline writes them (its comment calls the order critical: rows are matched by ``row_id``) and
    as the authors' loader sorts them. Not the natural order used for frame files."""
    return int(pid), str(tracklet_name)


def split_tracklet_name(name: str) -> tuple[int, int]:
    """``"{pid}_{tid}"`` -> (pid, tid) as integers, as the released scorer reads a tracklet name.

    Raises ``ValueError`` naming the tracklet when the name is not two ``_``-separated ASCII
    integers.
    """
    head, sep, tail = str(name).partition("_")
    if not (sep and is_ascii_int(head) and is_ascii_int(tail)):
        raise ValueError(f"Tracklet name {name!r} is not of the form '{{pid}}_{{tid}}' with integer pid and "
                         f"tid, which the challenge scorer (TEST.JUNK_RULE tracklet) needs; rename it, or use "
                         f"TEST.JUNK_RULE camera for such data")
    return int(head), int(tail)


def csv_unsafe_reason(name: str) -> str | None:
    """Why a tracklet name cannot go into a submission CSV (whitespace, comma, quote), or None."""
    if not name:
        return "empty name"
    match = _CSV_UNSAFE_RE.search(name)
    if match:
        char = match.group(0)
        kind = {" ": "a space", ",": "a comma", '"': "a quote", "'": "a quote"}.get(
            char, "a line break" if char in "\r\n" else "whitespace")
        return f"contains {kind} ({char!r})"
    return None


def good_and_junk(query_pid, query_key, pids, keys):
    """Both junk rules in one: (good, junk) masks of gallery entries for one query or for pairs.

    Among the entries of the query's pid, junk = the same key as the query (its camera under the
    "camera" rule, its tracklet id under "tracklet"), good = another key. An entry of another
    identity is neither, even when it shares the key. Works elementwise on scalars, NumPy arrays
    and torch tensors (pids, keys (G,) against a scalar query, or (P,) pairs against (P,)).
    """
    same_pid = pids == query_pid
    same_key = keys == query_key
    return same_pid & ~same_key, same_pid & same_key
