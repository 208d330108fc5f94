"""The P x K identity batch sampler (datasets/identity_sampler.py): the number of full batches against an oracle,
P distinct identities times K clips per batch, deterministic per seed and epoch, disjoint and complete DDP shards,
errors that name the keys."""
from collections import Counter

import numpy as np
import pytest

from datasets.identity_sampler import IdentityBatchSampler, max_full_batches


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
