"""The per-condition report (utils/report.py: table, JSON dict, PNG) on tiny Tracklet records, and clothes-changed
queries as their own group (issue 18): a query "changed clothes" when every true match wears another outfit; the
report gains a "clothes" panel, the evaluation summary a pooled figure; a session panel with no known session is
left out (issue 21)."""
import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from datasets.detreidx.records import Tracklet
from tests.helpers.data import make_aerial_tracklet, make_ground_tracklet
from utils.report import (
    clothes_changed_summary,
    clothes_groups,
    condition_report,
    format_condition_report,
    session_groups,
    write_condition_report,
)


@pytest.fixture()
def records():
    queries = [
        make_aerial_tracklet(1, "0001_1", 5.8, 10, 30, "S1"),     # same session (gallery 0001_5 is S1)
        make_aerial_tracklet(1, "0001_2", 40, 80, 30, "S2"),      # different session
        make_aerial_tracklet(2, "0002_1", 20, 0, 90, "S1"),       # mixed (gallery S1 and S2)
        make_aerial_tracklet(3, "0003_1", 90, 120, 60, "S1"),     # no true match: left out
        make_ground_tracklet(2, "0002_9"),                        # ground query: left out
        make_aerial_tracklet(4, "0004_1", 15, 10, 60, None),      # unknown session
    ]
    gallery = [make_aerial_tracklet(1, "0001_5", 10, 0, 90, "S1"), make_aerial_tracklet(2, "0002_5", 30, 0, 90, "S1"),
               make_aerial_tracklet(2, "0002_6", 30, 0, 90, "S2"), make_aerial_tracklet(4, "0004_5", 10, 0, 90, "S2"),
               make_ground_tracklet(4, "0004_7")]
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


# ----------------------------------------------------------------------------- clothes changes
OUTFITS = {"0001_1": "1/A", "0001_2": "1/B", "0001_3": "1/B", "0002_4": "2/A", "0002_5": "2/A",
           "0003_6": "3/A", "0003_7": "3/B", "0003_8": "3/A"}


def test_clothes_groups_follow_the_true_matches():
    queries = ["0001_1", "0002_4", "0003_6", "0001_2", "0009_9"]
    gallery = ["0001_2", "0001_3", "0002_5", "0003_7", "0003_8", "0001_1"]
    # 0001_1 (A): matches B, B -> changed; 0002_4: 0002_5 same outfit -> same; 0003_6 (A): B and A -> changed
    # (one match in another outfit); 0001_2 (B): 0001_3 B and 0001_1 A -> changed; 0009_9: no label -> unknown
    assert clothes_groups(queries, gallery, OUTFITS) == ["clothes changed", "same clothes", "clothes changed",
                                                         "clothes changed", "unknown"]
    assert clothes_groups(queries, gallery, None) == ["unknown"] * 5


def cc_average_precision(ranked_names, query, outfits):
    """Oracle from the CC-ReID rule (standard AP): same pid in another outfit = good; same pid in the
    query's outfit (the query itself included) = junk, skipped; others = wrong."""
    pid = query.split("_")[0]
    kept = [n for n in ranked_names if not (n.split("_")[0] == pid and outfits[n] == outfits[query])]
    good = [i for i, n in enumerate(kept) if n.split("_")[0] == pid]
    if not good:
        return None
    return sum((k + 1) / (rank + 1) for k, rank in enumerate(good)) / len(good)


def test_clothes_changing_protocol_makes_same_outfit_matches_junk():
    gallery = ["0001_2", "0001_3", "0002_5", "0003_7", "0003_8", "0001_1"]
    queries = ["0001_1", "0003_6", "0002_4"]
    ranking = np.array([[0, 5, 2, 1, 3, 4],     # 0001_1 (A): 0001_2 B first -> good; 0001_1 itself junk
                        [4, 2, 3, 0, 1, 5],     # 0003_6 (A): 0003_8 (A) junk, 0002_5 wrong, 0003_7 (B) good
                        [2, 0, 1, 3, 4, 5]])    # 0002_4: only same-outfit matches -> left out
    case = SimpleNamespace(query_names=queries, gallery_names=gallery, ranking=ranking,
                           metrics={"AP": np.array([0.1, 0.2, 0.3]), "R1_hit": np.zeros(3, bool)})
    summary = clothes_changed_summary({1: case, 2: SimpleNamespace(metrics=None)}, OUTFITS, ap_mode="standard")
    expected = [cc_average_precision([gallery[g] for g in row], q, OUTFITS) for q, row in zip(queries, ranking)]
    assert expected[2] is None
    assert summary["clothes changed"]["count"] == 2
    assert summary["clothes changed"]["mAP"] == pytest.approx(100 * (expected[0] + expected[1]) / 2)
    assert summary["clothes changed"]["R1"] == pytest.approx(50.0)    # 0001_1 right at rank 1, 0003_6 not
    assert clothes_changed_summary({1: case}, None) is None


def track(pid, name, view, session):
    return Tracklet(frames=(), pid=pid, camid=0 if view == "ground" else 1, view=view, name=name, session=session,
                    height=None if view == "ground" else 20.0, distance=None if view == "ground" else 10.0,
                    angle=None if view == "ground" else 30.0, aerial_distance=None if view == "ground" else 22.4)


def test_condition_report_has_a_clothes_panel_and_no_all_unknown_session_panel():
    queries = [track(1, "0001_1", "aerial", "S1"), track(2, "0002_4", "aerial", "S1")]
    gallery = [track(1, "0001_2", "ground", None), track(2, "0002_5", "ground", None)]   # case 1: no gallery session
    report = condition_report([0.5, 1.0], [False, True], queries, gallery, outfits=OUTFITS)
    assert "session" not in report["conditions"]
    clothes = {b["label"]: b for b in report["conditions"]["clothes"]["bins"]}
    assert clothes["clothes changed"]["count"] == 1 and clothes["clothes changed"]["mAP"] == 0.5
    assert clothes["same clothes"]["count"] == 1 and "unknown" not in clothes
    assert "clothes" not in condition_report([0.5, 1.0], [False, True], queries, gallery)["conditions"]


def test_queries_without_an_outfit_label_are_left_out_of_the_clothes_changed_figure():
    gallery = ["0001_2", "0004_2", "0004_3"]                   # identity 4 has no outfit labels
    queries = ["0001_1", "0004_1"]
    ranking = np.array([[0, 1, 2], [1, 2, 0]])                 # both find their identity at rank 1
    case = SimpleNamespace(query_names=queries, gallery_names=gallery, ranking=ranking,
                           metrics={"AP": np.array([1.0, 1.0]), "R1_hit": np.ones(2, bool)})
    summary = clothes_changed_summary({1: case}, OUTFITS)
    assert summary["clothes changed"] == {"count": 1, "mAP": 100.0, "R1": 100.0}
