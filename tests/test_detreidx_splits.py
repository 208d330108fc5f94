"""The labelled validation split (datasets/detreidx/splits.py): held-out train identities laid out like the three
test cases, every query with a true match, nothing needed dropped, DATASETS.VAL_IDS checked."""
import numpy as np
import pytest

from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.records import Tracklet
from datasets.detreidx.scan import DatasetLayoutError
from datasets.detreidx.splits import split_cases_from_tracklets


def test_validation_split_has_true_matches_in_every_case(tiny_root):
    ds = DetReIDX(tiny_root, val_ids=2, seed=3)
    assert ds.num_train_pids == 4 and len(ds.val_pids) == 2
    assert not ds.val_pids & {t.pid for t in ds.train}
    assert sorted({t.label for t in ds.train}) == list(range(4))
    assert set(ds.val) == {1, 2, 3}
    for split in ds.val.values():
        for q in split.query:
            # Challenge rule (same pid, another tracklet) and Market rule (same pid, another camera).
            assert any(g.pid == q.pid and g.name != q.name for g in split.gallery)
            assert any(g.pid == q.pid and g.camid != q.camid for g in split.gallery)
    again = DetReIDX(tiny_root, val_ids=2, seed=3)
    assert again.val_pids == ds.val_pids and [t.name for t in again.val[3].query] == [t.name for t in ds.val[3].query]


def test_val_ids_too_large_names_the_key(tiny_root):
    with pytest.raises(DatasetLayoutError, match="DATASETS.VAL_IDS"):
        DetReIDX(tiny_root, val_ids=6)


def test_split_cases_drops_nothing_needed():
    make = lambda pid, name, view, camid: Tracklet(("x/1.jpg",), pid, camid, view, name, None, None, None, None, None)
    tracklets = [make(1, "1_1", "ground", 0), make(1, "1_2", "aerial", 1), make(1, "1_3", "aerial", 2),
                 make(2, "2_4", "aerial", 1)]
    cases = split_cases_from_tracklets(tracklets, np.random.default_rng(0))
    assert [t.name for t in cases[1].query] == ["1_2", "1_3"] and [t.name for t in cases[1].gallery] == ["1_1"]
    assert [t.name for t in cases[3].query] == ["1_2"]
    assert sorted(t.name for t in cases[3].gallery) == ["1_3", "2_4"]
