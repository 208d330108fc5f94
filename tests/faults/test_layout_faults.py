"""Faults in the dataset folder layout, through the scanner, its CLI, train.py and the submission checker.

Rows: missing case or split folder; PID folder not an integer; unknown frame-name scheme; the same
tracklet name under two PIDs in one case.
"""
import os
import re
import shutil

import pytest

from datasets.build import build_dataset
from datasets.detreidx.scan import DatasetLayoutError
from tests.helpers.cli import assert_clean_failure, run_cli
from tests.helpers.data import make_tiny_cfg
from tests.helpers.paths import DEMO_CONFIG
from tests.helpers.training import make_tiny_opts
from utils.protocol import CASE_FOLDERS
from utils.submission import check_submission, write_submission

# What every layout error must show besides the path: the expected folder structure.
LAYOUT = "<PID>/<tracklet>/"


def _layout_error(root) -> str:
    with pytest.raises(DatasetLayoutError) as caught:
        build_dataset(make_tiny_cfg(root))
    return str(caught.value)


@pytest.mark.slow
def test_missing_case_folder_names_it_and_the_layout(tiny_root_copy):
    missing = os.path.join(tiny_root_copy, CASE_FOLDERS[2])
    shutil.rmtree(missing)
    message = _layout_error(tiny_root_copy)
    assert missing in message and LAYOUT in message


def test_missing_split_folder_names_it_and_the_layout(tiny_root_copy):
    missing = os.path.join(tiny_root_copy, CASE_FOLDERS[3], "gallery")
    shutil.rmtree(missing)
    message = _layout_error(tiny_root_copy)
    assert missing in message and LAYOUT in message


@pytest.mark.parametrize("where", ["train", os.path.join(CASE_FOLDERS[1], "query")])
def test_pid_folder_not_an_integer_names_it_and_the_layout(tiny_root_copy, where):
    part = os.path.join(tiny_root_copy, where)
    first = sorted(os.listdir(part))[0]
    renamed = os.path.join(part, "person_" + first)
    os.rename(os.path.join(part, first), renamed)
    message = _layout_error(tiny_root_copy)
    assert renamed in message and LAYOUT in message


def test_unknown_frame_name_scheme_names_the_file_and_the_schemes(tiny_root_copy):
    folder = os.path.join(tiny_root_copy, "train", "0002", sorted(os.listdir(os.path.join(tiny_root_copy, "train", "0002")))[0])
    for number, frame in enumerate(sorted(os.listdir(folder)), start=1):  # a camera's own naming
        os.rename(os.path.join(folder, frame), os.path.join(folder, f"IMG_{number:04d}.jpg"))
    message = _layout_error(tiny_root_copy)
    assert folder in message and "IMG_0001.jpg" in message
    assert "PID_DD_MM_YYYY" in message and "DATASETS.UNKNOWN_NAMES_AS_GROUND" in message
    # The documented escape hatch: such frames count as ground frames.
    dataset = build_dataset(make_tiny_cfg(tiny_root_copy, "DATASETS.UNKNOWN_NAMES_AS_GROUND", "True"))
    assert dataset.train


def _duplicate_tracklet_name(root, case: int, source: str) -> tuple[str, str]:
    """Copy a ``source`` (query or gallery) tracklet of ``case`` under another gallery PID, keeping its name."""
    source_dir = os.path.join(root, CASE_FOLDERS[case], source)
    gallery = os.path.join(root, CASE_FOLDERS[case], "gallery")
    pid = sorted(os.listdir(source_dir))[0]
    name = sorted(os.listdir(os.path.join(source_dir, pid)))[0]
    other_pid = next(p for p in sorted(os.listdir(gallery)) if p != pid)
    copy = os.path.join(gallery, other_pid, name)
    shutil.copytree(os.path.join(source_dir, pid, name), copy)
    return os.path.join(source_dir, pid, name), copy


@pytest.mark.parametrize("source", ["query", "gallery"])
def test_same_tracklet_name_under_two_pids_in_one_case_is_an_error(tiny_root_copy, source):
    original, copy = _duplicate_tracklet_name(tiny_root_copy, 1, source)
    message = _layout_error(tiny_root_copy)
    assert original in message and copy in message and "rename" in message


@pytest.mark.slow
def test_submission_checker_cli_reports_the_ambiguous_name(tiny_root_copy, tmp_path):
    _duplicate_tracklet_name(tiny_root_copy, 2, "gallery")
    csv_path = str(tmp_path / "submission.csv")
    write_submission(csv_path, [(2, "0007_1", ["0007_2"])])
    assert any("several PIDs" in p for p in check_submission(csv_path, tiny_root_copy))
    proc = run_cli("-m", "utils.submission", "check", csv_path, "--root", tiny_root_copy)
    assert proc.returncode == 1 and "several PIDs" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_layout_errors_reach_the_command_lines_without_a_traceback(tiny_root_copy, tmp_path):
    pid_folder = os.path.join(tiny_root_copy, CASE_FOLDERS[1], "gallery", "not_a_pid")
    os.makedirs(pid_folder)
    scan = run_cli("-m", "datasets.detreidx", "--root", tiny_root_copy)
    assert_clean_failure(scan, pid_folder, LAYOUT)
    train = run_cli("train.py", "--config_file", DEMO_CONFIG,
                    *make_tiny_opts(tiny_root_copy, str(tmp_path / "out"), epochs=1))
    assert_clean_failure(train, pid_folder, LAYOUT)
    assert not re.search(r"epoch 1 \[", train.stdout)


@pytest.mark.slow
def test_unusable_tracklet_names_stop_train_cli_before_training(tiny_root_copy, tmp_path):
    # A space, a comma, a quote, a non-{pid}_{tid} name and a Unicode digit: one message for all, before epoch 1.
    pid_dir = os.path.join(tiny_root_copy, "train", "0003")
    source = os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0])
    bad = ["0003_1 a", "0003_2,", "0003_'3", "0003_x", "0003_4\u00b2"]
    for name in bad:
        shutil.copytree(source, os.path.join(pid_dir, name))
    train = run_cli("train.py", "--config_file", DEMO_CONFIG,
                    *make_tiny_opts(tiny_root_copy, str(tmp_path / "out"), epochs=1))
    out = assert_clean_failure(train, "5 tracklet folder name(s) cannot go into the submission CSV",
                               *(repr(os.path.join(pid_dir, name)) for name in bad))
    assert not re.search(r"epoch 1 \[", out)


def test_pid_folder_with_a_trailing_space_is_shown_quoted(tiny_root_copy):
    part = os.path.join(tiny_root_copy, "train")
    first = sorted(os.listdir(part))[0]
    os.rename(os.path.join(part, first), os.path.join(part, first + " "))
    message = _layout_error(tiny_root_copy)
    assert repr(os.path.join(part, first + " ")) in message and LAYOUT in message
