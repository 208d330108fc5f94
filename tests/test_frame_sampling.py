"""Temporal sampling (datasets/frame_sampling.py): padding, blocks, restricted random sampling, even and dense
clips, and test clips from the block starts i*(n//T) as the authors take them."""
import numpy as np
import pytest

from configs import get_defaults
from datasets.frame_sampling import (
    block_bounds,
    block_start_indices,
    dense_chunks,
    even_indices,
    inference_clips,
    padded_frame_indices,
    restricted_random_indices,
)


def test_padding_repeats_the_last_frame():
    assert padded_frame_indices(3, 8).tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    assert padded_frame_indices(10, 8).tolist() == list(range(10))


def test_block_bounds_worked_example():
    # 20 frames, 8 blocks: size 2, the last block takes the remainder (14..19).
    assert block_bounds(20, 8).tolist() == [[0, 2], [2, 4], [4, 6], [6, 8], [8, 10], [10, 12], [12, 14], [14, 20]]


def test_restricted_random_one_frame_per_block():
    rng = np.random.default_rng(0)
    seen_last_block = set()
    for _ in range(300):
        idx = restricted_random_indices(20, 8, rng)
        assert idx.shape == (8,) and idx.dtype == np.int64
        for i, (lo, hi) in enumerate(block_bounds(20, 8)):
            assert lo <= idx[i] < hi
        seen_last_block.add(int(idx[-1]))
    assert seen_last_block == set(range(14, 20))   # every frame of the remainder block can be drawn


def test_restricted_random_draws_each_block_independently():
    """Each block gets its own random offset: one offset shared by all blocks would make the clip a
    fixed stride pattern shifted as a whole (issue 13: a mutant with a shared draw went unnoticed)."""
    rng = np.random.default_rng(1)
    draws = 400
    offsets = np.stack([restricted_random_indices(80, 8, rng) - block_bounds(80, 8)[:, 0] for _ in range(draws)])
    assert offsets.shape == (draws, 8) and offsets.min() == 0 and offsets.max() == 9
    # Shared offset: every draw has 8 equal offsets. Independent: that happens with probability 1e-7.
    all_equal = (offsets == offsets[:, :1]).all(axis=1).mean()
    assert all_equal < 0.05
    # Offsets of different blocks are uncorrelated (shared offset: correlation 1).
    correlation = np.corrcoef(offsets.T)[np.triu_indices(8, 1)]
    assert np.abs(correlation).max() < 0.25


def test_restricted_random_short_and_exact_tracklets():
    rng = np.random.default_rng(1)
    assert restricted_random_indices(3, 8, rng).tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    assert restricted_random_indices(8, 8, rng).tolist() == list(range(8))
    assert restricted_random_indices(1, 4, rng).tolist() == [0, 0, 0, 0]


def test_even_indices_worked_examples():
    assert even_indices(16, 16).tolist() == list(range(16))
    assert even_indices(32, 4).tolist() == [0, 8, 16, 24]
    assert even_indices(31, 16).tolist() == [0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29]
    assert even_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert (even_indices(100, 16) == even_indices(100, 16)).all()


def test_dense_chunks_cover_every_frame_once_then_pad():
    chunks = dense_chunks(20, 8)
    assert [c.tolist() for c in chunks] == [list(range(8)), list(range(8, 16)), [16, 17, 18, 19, 19, 19, 19, 19]]
    assert [c.tolist() for c in dense_chunks(16, 8)] == [list(range(8)), list(range(8, 16))]
    assert [c.tolist() for c in dense_chunks(3, 8)] == [[0, 1, 2, 2, 2, 2, 2, 2]]
    assert len(inference_clips(20, 8, "even")) == 1 and len(inference_clips(20, 8, "dense")) == 3
    with pytest.raises(ValueError, match="TEST.SAMPLING"):
        inference_clips(20, 8, "random")


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 31, 100])
def test_test_frames_are_block_starts(frames):
    assert get_defaults().TEST.SAMPLING == "blocks"
    padded = list(range(frames)) + [frames - 1] * max(0, 16 - frames)   # pad with the last frame
    expected = [padded[i * (len(padded) // 16)] for i in range(16)]     # the authors' i*(n//T)
    assert block_start_indices(frames, 16).tolist() == expected
    assert [c.tolist() for c in inference_clips(frames, 16, "blocks")] == [expected]
