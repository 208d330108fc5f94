"""One home for the protocol rules: the scorer (utils.metrics, utils.submission score), the checker
(utils.submission check) and the scanner (datasets.detreidx) use the very objects of utils.protocol,
and no other module spells a case folder or case name of its own; natural sort order of frame names."""
import ast
import os

import numpy as np
import pytest

import datasets.detreidx.dataset as scanned_dataset
import datasets.detreidx.frames as frame_lists
import datasets.detreidx.records as records
import datasets.detreidx.scan as scanner
import utils.metrics as metrics
import utils.protocol as protocol
import utils.submission as submission
from tests.helpers.paths import REPO_ROOT
from utils.protocol import natural_sort_key


@pytest.mark.parametrize("module,names", [
    (metrics, ("AP_MODES", "JUNK_RULES", "good_and_junk", "split_tracklet_name")),
    (submission, ("CASE_BY_NAME", "CASE_FOLDERS", "CASE_NAMES", "CASE_PARTS", "EXPECTED_LAYOUT", "csv_unsafe_reason",
                  "good_and_junk", "is_ascii_int", "split_tracklet_name", "submission_row_key")),
    (scanned_dataset, ("CASE_FOLDERS", "CASE_VIEWS", "EXPECTED_LAYOUT", "TRAIN_FOLDER")),
    (scanner, ("EXPECTED_LAYOUT", "FRAME_EXTENSIONS", "split_tracklet_name")),
    (records, ("CASE_NAMES", "submission_row_key")),
    (frame_lists, ("natural_sort_key",)),
])
def test_scorer_checker_and_scanner_use_the_protocol_objects(module, names):
    for name in names:
        assert getattr(module, name) is getattr(protocol, name), f"{module.__name__}.{name} is not utils.protocol's"


def test_no_module_keeps_its_own_copy_of_the_case_folders_or_names():
    protocol_strings = set(protocol.CASE_FOLDERS.values()) | set(protocol.CASE_NAMES.values())
    offenders = []
    for folder in ("utils", "datasets", "processor", "tools"):
        for dirpath, _, files in os.walk(os.path.join(REPO_ROOT, folder)):
            for file in files:
                path = os.path.join(dirpath, file)
                if not file.endswith(".py") or os.path.samefile(path, protocol.__file__):
                    continue
                tree = ast.parse(open(path, encoding="utf-8").read())
                offenders += [f"{path}:{node.lineno}" for node in ast.walk(tree)
                              if isinstance(node, ast.Constant) and node.value in protocol_strings]
    assert not offenders, f"case folder / name literals outside utils/protocol.py: {offenders}"


@pytest.mark.parametrize("name", ["7_3", "0007_03", "12_0", "x_1", "1_x", "1", "1__2", "²_1", "1_2_3", " 1_2", "1_2 "])
def test_scorer_and_evaluator_accept_and_refuse_the_same_names(tmp_path, name):
    """The tracklet-name rule is split_tracklet_name wherever a name is read as (pid, tid)."""
    try:
        expected = protocol.split_tracklet_name(name)
    except ValueError:
        expected = None
    dist = np.zeros((1, 2))
    try:
        got = metrics.evaluate_ranking(dist, [1], [1, 2], q_names=[name], g_names=["1_9", "2_9"])
    except ValueError as exc:
        assert expected is None and repr(name) in str(exc)
    else:
        assert expected is not None and got["num_queries"] == 1
    csv_path = tmp_path / "s.csv"
    csv_path.write_text(f"row_id,case,query_tracklet,ranked_gallery_tracklets\n1,{protocol.CASE_NAMES[1]},"
                        f"\"{name}\",1_9 2_9\n", encoding="utf-8")
    try:
        submission.score_submission(str(csv_path))
    except ValueError as exc:
        assert expected is None and repr(name) in str(exc)
    else:
        assert expected is not None


def test_both_junk_rules_are_one_function():
    pids, keys = np.array([1, 1, 2, 2]), np.array([5, 6, 5, 6])
    good, junk = protocol.good_and_junk(1, 5, pids, keys)
    assert good.tolist() == [False, True, False, False]     # same identity, another tracklet / camera
    assert junk.tolist() == [True, False, False, False]     # another identity is never junk, even with key 5


def test_natural_sort_orders_unpadded_frame_numbers():
    names = ["a_10.jpg", "a_2.jpg", "a_1.jpg"]
    assert sorted(names, key=natural_sort_key) == ["a_1.jpg", "a_2.jpg", "a_10.jpg"]


def test_submission_row_key_is_pid_as_int_then_name_as_plain_string():
    """The organisers' row order: PID numerically (9 before 10), then the name as a string (5453 before 987)."""
    rows = [(24, "0024_987"), (10, "0010_1"), (24, "0024_5453"), (9, "9_2")]
    assert sorted(rows, key=lambda r: protocol.submission_row_key(*r)) == [
        (9, "9_2"), (10, "0010_1"), (24, "0024_5453"), (24, "0024_987")]
    assert protocol.submission_row_key("0024", "0024_987") == (24, "0024_987")


@pytest.mark.parametrize("name", ["0004_1\t2", "0004_1\n2", "0004_1\r2", "0004_1 2", "0004_1,2", '0004_1"2',
                                  "0004_1'2", "0004_1\x0b2", ""])
def test_csv_unsafe_names_include_tabs_and_line_breaks(name):
    assert protocol.csv_unsafe_reason(name) is not None


def test_csv_safe_names_pass():
    assert protocol.csv_unsafe_reason("0004_12") is None and protocol.csv_unsafe_reason("a-b.c_d") is None
