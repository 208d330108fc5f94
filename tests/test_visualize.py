"""Rank-list pictures (utils/visualize.py): tiles framed by kind (query, true match, other identity, junk, or
unlabelled when there is no ground truth), from tracklet frames, a missing frame included."""
import os

import cv2
import numpy as np

from tests.helpers.data import make_aerial_tracklet, make_ground_tracklet
from utils import visualize
from utils.visualize import COLOURS, visualize_ranklists


def _write_frames(folder, count, colour):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"frame_{i:03d}.jpg")
        cv2.imwrite(path, np.full((24, 12, 3), colour, dtype=np.uint8))
        paths.append(path)
    return paths


def test_visualize_ranklists_colours_matches(tmp_path):
    queries = [make_ground_tracklet(1, "0001_1", _write_frames(tmp_path / "q1", 5, 40)),
               make_ground_tracklet(2, "0002_1", _write_frames(tmp_path / "q2", 2, 80))]
    gallery = [make_aerial_tracklet(1, "0001_7", 10, 0, 90, "S1", _write_frames(tmp_path / "g0", 4, 120)),
               make_aerial_tracklet(2, "0002_7", 10, 0, 90, "S1", _write_frames(tmp_path / "g1", 1, 160)),
               make_aerial_tracklet(3, "0003_7", 10, 0, 90, "S1", [str(tmp_path / "missing.jpg")])]
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


def test_rank_list_kinds_with_and_without_ground_truth():
    names = ["a", "b", "q"]
    entries = visualize.ranklist_entries("q", names, [2, 0, 1], q_pid=7, g_pids=[7, 8, 7], labelled=True)
    assert [k for k, _ in entries] == ["junk", "match", "other"] and entries[0][1] == ["1 q"]
    assert visualize.has_labels([1, 2], [2, 3]) and not visualize.has_labels([1, 2], [3, 4])
    assert not visualize.has_labels(None, [1])
    # An anonymised test set: pids never shared, so nothing is drawn red.
    entries = visualize.ranklist_entries("q", names, [0, 1], q_pid=None, g_pids=None, labelled=False)
    assert [k for k, _ in entries] == ["unlabelled", "unlabelled"]
