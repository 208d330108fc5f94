"""The DetReIDX dataset (datasets/detreidx/dataset.py) on the tiny synthetic root: what the scan gives (ids,
labels, cameras, capture points, the three cases), both session-name styles, a camera table given by a
checkpoint (ids stay in range; a tracklet without a session falls back, and says so), the statistics table
logged for the log file only."""
import logging
import os

import numpy as np
import pytest

from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.names import CAPTURE_POINTS
from tests.helpers.data import break_session
from utils.logger import DETAIL_LOGGERS
from utils.protocol import CASE_FOLDERS, CASE_VIEWS, natural_sort_key


def test_scan_counts_and_metadata(tiny_root):
    ds = DetReIDX(tiny_root)
    assert ds.num_train_pids == 6 and ds.num_cameras == 3
    assert len(ds.train) == 6 * (2 + 2 * 2)
    assert sorted({t.label for t in ds.train}) == list(range(6))
    assert set(ds.cases) == {1, 2, 3}
    for t in ds.train:
        assert t.name.startswith(f"{t.pid:04d}_")
        assert list(t.frames) == sorted(t.frames)
        assert all(os.path.dirname(f) == t.folder for f in t.frames)
        if t.view == "ground":
            assert t.camid == 0 and t.height is None and t.session is None and t.view_id == 0
        else:
            assert t.camid == {"S1": 1, "S2": 2}[t.session] and t.view_id == 1
            assert (t.height, t.distance, t.angle) in CAPTURE_POINTS
            assert t.aerial_distance == pytest.approx(np.hypot(t.height, t.distance))
    for case, split in ds.cases.items():
        query_view, gallery_view = CASE_VIEWS[case]
        assert split.query and split.gallery and split.has_ground_truth
        assert all(t.view == query_view for t in split.query) and all(t.view == gallery_view for t in split.gallery)
        assert split.query == sorted(split.query, key=lambda t: (t.pid, natural_sort_key(t.name)))
        assert all(t.label == -1 for t in split.query + split.gallery)


def test_the_statistics_table_is_logged_where_the_console_shows_its_first_line_only(tiny_root, caplog):
    with caplog.at_level("INFO", logger="datasets.detreidx"):
        DetReIDX(tiny_root)
    tables = [r for r in caplog.records if r.getMessage().startswith("DetReIDX at") and "\n" in r.getMessage()]
    assert tables and all(r.name in DETAIL_LOGGERS for r in tables)


@pytest.mark.slow
def test_both_name_styles_give_three_cameras_and_capture_points(styled_root):
    ds = DetReIDX(styled_root)
    assert ds.num_cameras == 3 and ds.camera_index == {"ground": 0, "aerial-S1": 1, "aerial-S2": 2}
    for t in ds.train:
        assert (t.camid == 0) == (t.view == "ground")
        if t.view == "aerial":
            assert t.camid == int(t.session[1:]) and t.capture_point in CAPTURE_POINTS
    summary = ds.scan_summary
    assert not summary.no_session and not summary.pid_mismatch and not summary.view_mismatch


@pytest.fixture
def root_with_sessionless_query(tiny_root_copy):
    """(root, tracklet name): a copy of the tiny data whose first query tracklet of case 1 has no session."""
    root = tiny_root_copy
    query = os.path.join(root, CASE_FOLDERS[1], "query")
    pid = sorted(os.listdir(query))[0]
    tracklet = sorted(os.listdir(os.path.join(query, pid)))[0]
    break_session(os.path.join(query, pid, tracklet))
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


def test_case_queries_are_in_submission_row_order_pid_then_name_as_a_string(tmp_path):
    """0024_5453 before 0024_987 (plain string order, the organisers' row order), PID 9 before PID 24."""
    root = tmp_path / "rows"
    for part, names in (("query", ["0024_987", "0024_5453", "0009_12"]), ("gallery", ["0024_1", "0009_3"])):
        for name in names:
            folder = root / CASE_FOLDERS[1] / part / name.split("_")[0] / name
            folder.mkdir(parents=True)
            (folder / f"{name.split('_')[0]}_00001.jpg").write_bytes(b"")
    split = DetReIDX(str(root), cases=[1]).cases[1]
    assert [t.name for t in split.query] == ["0009_12", "0024_5453", "0024_987"]
    assert [t.name for t in split.gallery] == ["0009_3", "0024_1"]
