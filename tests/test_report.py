"""utils/report.py (per-condition table, JSON dict, PNG) and utils/visualize.py (rank-list PNGs)
on tiny synthetic Tracklet records."""
import json
import math
import os

import cv2
import numpy as np
import pytest

from datasets.detreidx.records import Tracklet
from utils.report import condition_report, format_condition_report, session_groups, write_condition_report
from utils.visualize import COLOURS, visualize_ranklists


def aerial(pid, name, height, distance, angle, session, frames=()):
    return Tracklet(frames=tuple(frames), pid=pid, camid=1 if session == "S1" else 2, view="aerial", name=name,
                    session=session, height=height, distance=distance, angle=angle,
                    aerial_distance=math.hypot(height, distance))


def ground(pid, name, frames=()):
    return Tracklet(frames=tuple(frames), pid=pid, camid=0, view="ground", name=name, session=None,
                    height=None, distance=None, angle=None, aerial_distance=None)


@pytest.fixture()
def records():
    queries = [
        aerial(1, "0001_1", 5.8, 10, 30, "S1"),     # same session (gallery 0001_5 is S1)
        aerial(1, "0001_2", 40, 80, 30, "S2"),      # different session
        aerial(2, "0002_1", 20, 0, 90, "S1"),       # mixed (gallery S1 and S2)
        aerial(3, "0003_1", 90, 120, 60, "S1"),     # no true match: left out
        ground(2, "0002_9"),                        # ground query: left out
        aerial(4, "0004_1", 15, 10, 60, None),      # unknown session
    ]
    gallery = [aerial(1, "0001_5", 10, 0, 90, "S1"), aerial(2, "0002_5", 30, 0, 90, "S1"),
               aerial(2, "0002_6", 30, 0, 90, "S2"), aerial(4, "0004_5", 10, 0, 90, "S2"), ground(4, "0004_7")]
    ap = np.array([1.0, 0.5, 0.25, np.nan, 1.0, 0.0])
    r1 = np.array([True, False, False, False, True, False])
    return queries, gallery, ap, r1


def test_session_groups(records):
    queries, gallery, _, _ = records
    assert session_groups(queries, gallery) == ["same session", "different session", "mixed", "unknown",
                                                 "unknown", "unknown"]


def test_condition_report_bins_and_means(records):
    queries, gallery, ap, r1 = records
    report = condition_report(ap, r1, queries, gallery)
    assert report["num_queries"] == 6 and report["num_aerial"] == 5 and report["num_evaluated"] == 4
    assert report["overall"]["mAP"] == pytest.approx((1 + 0.5 + 0.25 + 0) / 4)
    altitude = {row["label"]: row for row in report["conditions"]["altitude"]["bins"]}
    assert altitude["< 15 m"]["count"] == 1 and altitude["< 15 m"]["mAP"] == 1.0
    assert altitude["15-30 m"]["count"] == 2 and altitude["15-30 m"]["mAP"] == pytest.approx(0.125)
    assert altitude[">= 60 m"]["count"] == 0 and altitude[">= 60 m"]["mAP"] is None
    pitch = {row["label"]: row for row in report["conditions"]["pitch"]["bins"]}
    assert pitch["< 45 deg"]["count"] == 2 and pitch["< 45 deg"]["R1"] == 0.5
    session = {row["label"]: row for row in report["conditions"]["session"]["bins"]}
    assert session["same session"]["mAP"] == 1.0 and session["different session"]["mAP"] == 0.5
    assert session["mixed"]["mAP"] == 0.25 and session["unknown"]["count"] == 1
    for name in ("horizontal_distance", "aerial_distance"):   # every evaluated query lands in one bin
        assert sum(row["count"] for row in report["conditions"][name]["bins"]) == 4
    json.dumps(report, allow_nan=False)                        # JSON-ready: no NaN


def test_write_condition_report_table_and_png(tmp_path, records):
    queries, gallery, ap, r1 = records
    report, table, png = write_condition_report(str(tmp_path), ap, r1, queries, gallery, name="case3", title="case 3")
    assert png == str(tmp_path / "case3.png") and cv2.imread(png) is not None
    assert "altitude (height)" in table and "same session" in table and "4 of 5 aerial" in table
    assert table == format_condition_report(report, "case 3")
    assert sorted(os.listdir(tmp_path)) == ["case3.png"]       # no temp file left behind
    with pytest.raises(ValueError, match="one entry per query"):
        condition_report(ap[:2], r1, queries, gallery)


def _write_frames(folder, count, colour):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"frame_{i:03d}.jpg")
        cv2.imwrite(path, np.full((24, 12, 3), colour, dtype=np.uint8))
        paths.append(path)
    return paths


def test_visualize_ranklists_colours_matches(tmp_path):
    queries = [ground(1, "0001_1", _write_frames(tmp_path / "q1", 5, 40)),
               ground(2, "0002_1", _write_frames(tmp_path / "q2", 2, 80))]
    gallery = [aerial(1, "0001_7", 10, 0, 90, "S1", _write_frames(tmp_path / "g0", 4, 120)),
               aerial(2, "0002_7", 10, 0, 90, "S1", _write_frames(tmp_path / "g1", 1, 160)),
               aerial(3, "0003_7", 10, 0, 90, "S1", [str(tmp_path / "missing.jpg")])]
    ranking = np.array([[0, 1, 2], [2, 0, 1]])
    out = tmp_path / "ranklists"
    paths = visualize_ranklists(str(out), queries, gallery, ranking, [1, 2], [1, 2, 3], num_queries=5,
                                topk=2, frames_per_tracklet=3)
    assert len(paths) == 2 and all(os.path.isfile(p) for p in paths)
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)
    image = cv2.imread(paths[0])
    # Query tile, then rank 1 (a true match, green frame) and rank 2 (another identity, red frame).
    tile_width = 3 * 64 + 2 * 4
    assert image.shape[1] == 3 * tile_width + 2 * 6
    border_row = 18 + 1
    def colour_at(x):
        return image[border_row, x].astype(int)
    assert np.abs(colour_at(2) - COLOURS["query"]).max() < 40
    assert np.abs(colour_at(tile_width + 6 + 2) - COLOURS["match"]).max() < 40
    assert np.abs(colour_at(2 * (tile_width + 6) + 2) - COLOURS["other"]).max() < 40
