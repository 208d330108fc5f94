"""Temporal samplers, clip-consistent transforms and the P x K identity batch sampler."""
from collections import Counter

import numpy as np
import pytest
import torch

from datasets import transforms as T
from datasets.identity_sampler import IdentityBatchSampler, max_full_batches
from datasets.frame_sampling import (block_bounds, dense_chunks, even_indices, inference_clips, padded_frame_indices,
                               restricted_random_indices)


# ----------------------------------------------------------------------------- temporal sampling
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


# ----------------------------------------------------------------------------- transforms
def _clip_of_identical_frames(t=4, h=24, w=12, seed=0):
    frame = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return [frame.copy() for _ in range(t)], frame


def _always(**changes):
    base = dict(size=(32, 16), train=True, flip_prob=0.0, erase_prob=0.0, hue_prob=0.0, jitter_prob=0.0, lowres_prob=0.0)
    base.update(changes)
    return T.ClipTransform(**base)


@pytest.mark.parametrize("changes", [
    dict(flip_prob=1.0),
    dict(erase_prob=1.0),
    dict(hue_prob=1.0, hue=0.3),
    dict(jitter_prob=1.0, brightness=0.4, contrast=0.4, saturation=0.4),
    dict(lowres_prob=1.0, lowres_scale=(0.2, 0.4)),
    dict(flip_prob=1.0, erase_prob=1.0, hue_prob=1.0, jitter_prob=1.0, brightness=0.3, contrast=0.3, saturation=0.3,
         lowres_prob=1.0),
])
def test_identical_frames_stay_identical_after_random_transforms(changes):
    frames, _ = _clip_of_identical_frames()
    transform = _always(**changes)
    plain = _always()(frames, np.random.default_rng(0))
    for seed in range(5):
        out = transform(frames, np.random.default_rng(seed))
        assert out.shape == (4, 3, 32, 16) and out.dtype == torch.float32
        assert all(torch.equal(out[0], out[i]) for i in range(1, 4))
        assert not torch.equal(out, plain), "the transform should have changed the clip"


def test_flip_and_erase_do_what_they_say():
    frames, _ = _clip_of_identical_frames(t=2)
    plain = _always()(frames, np.random.default_rng(0))
    flipped = _always(flip_prob=1.0)(frames, np.random.default_rng(0))
    assert torch.equal(flipped, plain.flip(-1))
    erased = _always(erase_prob=1.0)(frames, np.random.default_rng(3))
    zero = (erased == 0).all(dim=1)[0]          # erased pixels = the mean colour = 0 after normalisation
    rows, cols = torch.nonzero(zero, as_tuple=True)
    assert rows.numel() > 0
    box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all(), "the erased area is one rectangle"


def test_erase_probability_means_what_it_says():
    frames, _ = _clip_of_identical_frames(t=1, h=32, w=16)
    plain = _always()(frames, np.random.default_rng(0))
    for prob, lo, hi in ((0.0, 0, 0), (1.0, 200, 200), (0.25, 25, 80)):
        transform = _always(erase_prob=prob)
        hits = sum(not torch.equal(transform(frames, np.random.default_rng(s)), plain) for s in range(200))
        assert lo <= hits <= hi, (prob, hits)


def test_hue_shift_is_circular_and_keeps_grey():
    grey = np.full((1, 4, 4, 3), 128, np.uint8)
    assert np.array_equal(T.hue_shift_clip(grey, 0.3), grey)
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    shifted = T.hue_shift_clip(red, 1 / 3)             # red -> green
    assert shifted[0, 0, 0].argmax() == 1
    assert np.array_equal(T.hue_shift_clip(red, 1.0), red)


def test_test_transform_is_deterministic_resize_and_normalise():
    frames, frame = _clip_of_identical_frames(t=2, h=32, w=16)
    transform = T.ClipTransform(size=(32, 16), train=False)
    out = transform(frames)
    expected = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert T.resize_frames([np.zeros((10, 7, 3), np.uint8)], (20, 9)).shape == (1, 20, 9, 3)


def test_transform_from_cfg_validates_keys():
    from configs import load_config
    cfg = load_config(None, ["INPUT.ERASE_PROB", "1.5"])
    with pytest.raises(ValueError, match="INPUT.ERASE_PROB"):
        T.ClipTransform.from_cfg(cfg, train=True)
    cfg = load_config(None, ["INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[48, 24]"])
    assert T.ClipTransform.from_cfg(cfg, train=True).size == (64, 32)
    assert T.ClipTransform.from_cfg(cfg, train=False).size == (48, 24) and not T.ClipTransform.from_cfg(cfg, False).train


# ----------------------------------------------------------------------------- identity sampler
def _labels(counts):
    return [label for label, n in enumerate(counts) for _ in range(n)]


def _max_batches_oracle(chunks, p):
    # Obviously-correct search: try every b and check the packing condition directly.
    return max(b for b in range(0, sum(chunks) // p + 1) if sum(min(c, b) for c in chunks) >= p * b)


def test_max_full_batches_matches_oracle():
    rng = np.random.default_rng(0)
    for _ in range(200):
        chunks = rng.integers(1, 8, size=rng.integers(1, 12)).tolist()
        p = int(rng.integers(1, 6))
        assert max_full_batches(chunks, p) == _max_batches_oracle(chunks, p)


def test_batches_hold_p_distinct_identities_times_k():
    counts = [1, 2, 3, 4, 5, 8, 9, 12, 2, 7, 4, 4]
    labels = _labels(counts)
    sampler = IdentityBatchSampler(labels, batch_size=16, num_instances=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        indices = [i for i, _ in batch]
        per_id = Counter(labels[i] for i in indices)
        assert len(per_id) == 4 and set(per_id.values()) == {4}
        for k in range(4):   # each identity's K clips are consecutive
            assert len({labels[i] for i in indices[4 * k:4 * k + 4]}) == 1
        # Identities with >= K tracklets never repeat a tracklet within their K; smaller ones show all theirs.
        for label, n in per_id.items():
            mine = [i for i in indices if labels[i] == label]
            assert len(set(mine)) == min(counts[label], 4)
    seeds = [s for batch in batches for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_sampler_is_deterministic_per_seed_and_epoch():
    labels = _labels([6, 5, 4, 9, 3, 8, 4, 4])
    a = IdentityBatchSampler(labels, 8, 2, seed=11)
    b = IdentityBatchSampler(labels, 8, 2, seed=11)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b) and len(list(b)) == len(a)
    assert list(IdentityBatchSampler(labels, 8, 2, seed=12)) != list(IdentityBatchSampler(labels, 8, 2, seed=11))


@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_shards_are_disjoint_and_complete(world_size):
    labels = _labels([5, 6, 7, 8, 4, 4, 9, 3, 6, 6, 5, 7])
    full = IdentityBatchSampler(labels, 16, 2, seed=5)
    full.set_epoch(1)
    global_batches = list(full)
    shards = []
    for rank in range(world_size):
        s = IdentityBatchSampler(labels, 16, 2, seed=5, rank=rank, world_size=world_size)
        s.set_epoch(1)
        shards.append(list(s))
        assert len(shards[-1]) == len(full)
        assert all(len(b) == 16 // world_size for b in shards[-1])
    for step, batch in enumerate(global_batches):
        parts = [shard[step] for shard in shards]
        assert sum(parts, []) == batch      # the ranks' shares of one step form exactly the global batch
        ids = [{labels[i] for i, _ in part} for part in parts]
        assert all(not (ids[a] & ids[b]) for a in range(world_size) for b in range(a + 1, world_size))


def test_sampler_errors_name_the_keys():
    with pytest.raises(ValueError, match="IMS_PER_BATCH.*NUM_INSTANCE"):
        IdentityBatchSampler([0, 1], 10, 4)
    with pytest.raises(ValueError, match="lower SOLVER.IMS_PER_BATCH"):
        IdentityBatchSampler(_labels([4, 4, 4]), 16, 4)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        IdentityBatchSampler(_labels([4] * 8), 12, 4, world_size=2)
