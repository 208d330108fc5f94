"""Clothes-changed queries as their own group (issue 18): a query "changed clothes" when every true
match wears another outfit; the per-condition report gains a "clothes" panel, the evaluation summary
a pooled figure; a session panel with no known session is left out (issue 21)."""
from types import SimpleNamespace

import numpy as np
import pytest

from datasets.detreidx import Tracklet
from utils.report import clothes_changed_summary, clothes_groups, condition_report

OUTFITS = {"0001_1": "1/A", "0001_2": "1/B", "0001_3": "1/B", "0002_4": "2/A", "0002_5": "2/A",
           "0003_6": "3/A", "0003_7": "3/B", "0003_8": "3/A"}


def test_clothes_groups_follow_the_true_matches():
    queries = ["0001_1", "0002_4", "0003_6", "0001_2", "0009_9"]
    gallery = ["0001_2", "0001_3", "0002_5", "0003_7", "0003_8", "0001_1"]
    # 0001_1: matches 0001_2/3 both B -> changed; 0002_4: 0002_5 same; 0003_6: B and A -> mixed;
    # 0001_2: matches 0001_3 (B, same) and 0001_1 (A) -> mixed; 0009_9: no outfit -> unknown
    assert clothes_groups(queries, gallery, OUTFITS) == ["clothes changed", "same clothes", "mixed", "mixed",
                                                         "unknown"]
    assert clothes_groups(queries, gallery, None) == ["unknown"] * 5


def test_clothes_changed_summary_pools_the_cases_and_skips_queries_without_a_match():
    case1 = SimpleNamespace(query_names=["0001_1", "0002_4"], gallery_names=["0001_2", "0002_5"],
                            metrics={"AP": np.array([0.5, 1.0]), "R1_hit": np.array([False, True])})
    case3 = SimpleNamespace(query_names=["0001_3", "0003_6"], gallery_names=["0001_1", "0003_8"],
                            metrics={"AP": np.array([0.25, np.nan]), "R1_hit": np.array([False, False])})
    unscored = SimpleNamespace(query_names=["0001_1"], gallery_names=["0001_2"], metrics=None)
    summary = clothes_changed_summary({1: case1, 3: case3, 2: unscored}, OUTFITS)
    assert summary["clothes changed"] == {"count": 2, "mAP": pytest.approx(37.5), "R1": 0.0}
    assert summary["same clothes"] == {"count": 1, "mAP": 100.0, "R1": 100.0}   # 0003_6: AP nan, left out
    assert clothes_changed_summary({1: case1}, None) is None


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
