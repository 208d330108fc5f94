"""Compact frame lists (datasets/detreidx/frames.py): FrameNames and FramePaths equal a plain naturally sorted
list of names or paths (against that list on random and on hypothesis-drawn names), may span folders, and a
Tracklet record keeps its API with them."""
import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from datasets.detreidx.frames import FrameNames, FramePaths
from datasets.detreidx.records import Tracklet
from utils.protocol import natural_sort_key


# ----------------------------------------------------------------------------- compact frame lists
def _random_names(rng: np.random.Generator) -> list[str]:
    n = int(rng.integers(1, 40))
    family = int(rng.integers(5))
    numbers = np.sort(rng.choice(5000, size=n, replace=False)) if family != 1 else np.arange(n) * 3 + 7
    if family == 0:
        return [f"0004_M_27_F_{k:05d}.jpg" for k in numbers]         # padded, with gaps
    if family == 1:
        return [f"a_{k}.jpg" for k in numbers]                        # unpadded, evenly spaced
    if family == 2:
        return [f"x{k}y.png" for k in numbers]                        # unpadded, gaps
    if family == 3:
        return [f"f_{k:03d}.jpg" if i % 2 else f"f_{k}.jpg" for i, k in enumerate(numbers)]  # mixed padding
    return [f"{rng.choice(['a', 'b', 'c'])}_{k}.jpg" for k in numbers]  # no single template


def test_frame_names_equal_a_plain_sorted_list_on_random_names():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
        names = list(dict.fromkeys(_random_names(rng)))
        shuffled = [names[i] for i in rng.permutation(len(names))]
        compact = FrameNames.from_names(shuffled)
        oracle = sorted(shuffled, key=natural_sort_key)
        assert list(compact) == oracle and len(compact) == len(oracle)
        assert [compact[i] for i in range(-len(oracle), len(oracle))] == oracle + oracle
        assert compact[1:5] == oracle[1:5]
        assert FrameNames.from_names(oracle) == compact and hash(FrameNames.from_names(oracle)) == hash(compact)
        kept = FrameNames.from_names(shuffled, sort=False)
        assert list(kept) == shuffled
        kinds.add("joined" if compact._joined is not None else type(compact.numbers).__name__)
    assert kinds == {"joined", "range", "ndarray"}
    with pytest.raises(IndexError):
        FrameNames.from_names(["a_1.jpg"])[1]


def test_tracklet_accepts_a_tuple_of_paths_and_keeps_its_api():
    paths = ("d/x_3.jpg", "d/x_1.jpg", "d/x_2.jpg")
    t = Tracklet(paths, 1, 0, "ground", "1_1", None, None, None, None, None)
    assert isinstance(t.frames, FramePaths) and list(t.frames) == list(paths) and t.frames == paths
    assert t.folder == "d" and t.num_frames == 3 and t.frame_path(-1) == "d/x_2.jpg" and t.frames[0] == "d/x_3.jpg"
    assert dataclasses.replace(t, label=2).frames == t.frames and hash(t) == hash(dataclasses.replace(t))


def test_frame_lists_may_span_folders(tmp_path):
    paths = [os.path.join("a", "f1.jpg"), os.path.join("b", "f2.jpg"), os.path.join("a", "x_3.jpg")]
    frames = FramePaths.from_paths(paths)
    assert list(frames) == paths and frames[1] == paths[1] and len(frames) == 3
    same = FramePaths.from_paths(["./a/f1.jpg", "a/f2.jpg"])       # one folder, spelled two ways
    assert same.folder == "a" and list(same) == ["a/f1.jpg", "a/f2.jpg"]


# ----------------------------------------------------------------------------- properties (hypothesis)
frame_numbers = st.lists(st.integers(0, 10**7), min_size=1, max_size=60, unique=True)


@given(frame_numbers, st.sampled_from(["0004_M_27_F_", "a_", "x", "0004_23_10_2024_09_18_5.8_10_30_1_"]),
       st.sampled_from([".jpg", "y.png", ""]), st.integers(0, 8), st.randoms(use_true_random=False))
def test_compact_frame_names_equal_the_naturally_sorted_list(numbers, prefix, suffix, width, rng):
    names = [f"{prefix}{n:0{width}d}{suffix}" for n in numbers]
    names = list(dict.fromkeys(names))
    shuffled = names[:]
    rng.shuffle(shuffled)
    compact = FrameNames.from_names(shuffled)
    oracle = sorted(shuffled, key=natural_sort_key)
    assert list(compact) == oracle and len(compact) == len(oracle)
    assert [compact[i] for i in range(-len(oracle), len(oracle))] == oracle + oracle
    assert list(FrameNames.from_names(shuffled, sort=False)) == shuffled
    assert FrameNames.from_names(oracle) == compact and hash(FrameNames.from_names(oracle)) == hash(compact)


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1,
                        max_size=12), min_size=1, max_size=20, unique=True))
def test_compact_frame_names_keep_any_names(names):
    assert list(FrameNames.from_names(names, sort=False)) == names
    assert list(FrameNames.from_names(names)) == sorted(names, key=natural_sort_key)
