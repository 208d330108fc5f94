"""Camera ids that stay those the model was trained with: stable session numbering, the checkpoint's
camera table at evaluation, aerial tracklets without a readable session; ambiguous 23-token names;
frame lists spanning folders."""
import logging
import os
import subprocess
import sys

import pytest

from datasets.detreidx import CASE_FOLDERS, DetReIDX, FramePaths, parse_frame_name, standard_camera_index
from tests.datasets_fixtures import make_tiny_root
from tests.inference_fixtures import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD = "0004_23_10_2024_09_18_5.8_10_30"
SOFT_12 = "3_2_1_0_0_0_0_5_2_1_0_1"          # fields 9-20; field 21 follows in each case below


def test_session_numbering_is_stable_whichever_sessions_are_present():
    assert standard_camera_index({"ground", "aerial-S2"}) == {"ground": 0, "aerial-S2": 2}
    assert standard_camera_index({"ground", "aerial-S1", "aerial-S2", "aerial-unknown"}) == {
        "ground": 0, "aerial-S1": 1, "aerial-S2": 2, "aerial-unknown": 3}
    # A checkpoint that stored only its camera count: sessions 1..n-1.
    assert standard_camera_index(num_cameras=3) == {"ground": 0, "aerial-S1": 1, "aerial-S2": 2}


@pytest.mark.parametrize("name, session", [
    (f"{HEAD}_{SOFT_12}_2_1", "S1"),            # 23 tokens: field 22 is the session, no frame number
    (f"{HEAD}_{SOFT_12}_S2_00010", "S2"),       # 23 tokens: a soft field missing, explicit session
    (f"{HEAD}_{SOFT_12}_2_00010", "S2"),        # 23 tokens: a soft field missing, bare session
    (f"{HEAD}_{SOFT_12}_2_1_000123", "S1"),     # 24 tokens: the authors' tokens[-2]
    (f"{HEAD}_{SOFT_12}_2_0_000123", None),     # session 0 is not a session
])
def test_session_of_ambiguous_names(name, session):
    assert parse_frame_name(name + ".jpg").session == session


def _break_session(folder: str) -> None:
    """Rename the frames of an (authors'-form) aerial tracklet so the token before the frame number is 0."""
    for name in os.listdir(folder):
        tokens = os.path.splitext(name)[0].split("_")
        tokens[-2] = "0"
        os.rename(os.path.join(folder, name), os.path.join(folder, "_".join(tokens) + ".jpg"))


@pytest.fixture(scope="module")
def root_with_sessionless_query(tmp_path_factory):
    root = make_tiny_root(tmp_path_factory.mktemp("cams"))
    query = os.path.join(root, CASE_FOLDERS[1], "query")
    pid = sorted(os.listdir(query))[0]
    tracklet = sorted(os.listdir(os.path.join(query, pid)))[0]
    _break_session(os.path.join(query, pid, tracklet))
    return root, tracklet


def test_given_camera_table_keeps_ids_in_range_and_reports_the_fallback(root_with_sessionless_query, caplog):
    root, tracklet = root_with_sessionless_query
    own = DetReIDX(root)
    by_name = {t.name: t for t in own.cases[1].query}
    assert own.camera_index["aerial-unknown"] == 3 and by_name[tracklet].camid == 3 and own.num_cameras == 4

    table = {"ground": 0, "aerial-S1": 1, "aerial-S2": 2}
    with caplog.at_level(logging.WARNING):
        given = DetReIDX(root, camera_index=table)
    assert given.num_cameras == 3
    assert all(0 <= t.camid < 3 for s in given.cases.values() for t in s.query + s.gallery)
    assert {t.name: t for t in given.cases[1].query}[tracklet].camid == 1
    assert "aerial-unknown" in caplog.text and "camera 1" in caplog.text


def test_evaluation_of_a_sessionless_test_tracklet_does_not_crash(tmp_path):
    root, checkpoint = make_tiny_checkpoint(tmp_path)
    query = os.path.join(root, CASE_FOLDERS[1], "query")
    pid = sorted(os.listdir(query))[0]
    _break_session(os.path.join(query, pid, sorted(os.listdir(os.path.join(query, pid)))[0]))
    proc = subprocess.run(
        [sys.executable, "evaluate_all_cases.py", "--model_path", checkpoint, "DATASETS.ROOT_DIR", root,
         "DATALOADER.NUM_WORKERS", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert "aerial-unknown" in out and "mAP-3" in out


def test_frame_lists_may_span_folders(tmp_path):
    paths = [os.path.join("a", "f1.jpg"), os.path.join("b", "f2.jpg"), os.path.join("a", "x_3.jpg")]
    frames = FramePaths.from_paths(paths)
    assert list(frames) == paths and frames[1] == paths[1] and len(frames) == 3
    same = FramePaths.from_paths(["./a/f1.jpg", "a/f2.jpg"])       # one folder, spelled two ways
    assert same.folder == "a" and list(same) == ["a/f1.jpg", "a/f2.jpg"]


def test_an_explicit_session_token_wins_over_a_bare_integer_before_the_frame_number():
    # 25 tokens: field 22 holds "S2", the token before the frame number a bare "1" (a soft-biometric value).
    assert parse_frame_name(f"{HEAD}_{SOFT_12}_2_S2_1_000123.jpg").session == "S2"
    assert parse_frame_name(f"{HEAD}_{SOFT_12}_2_1_S2_000123.jpg").session == "S2"
