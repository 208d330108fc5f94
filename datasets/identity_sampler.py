"""P x K identity batch sampler: every batch holds P distinct identities with K tracklets each.

Deterministic from (seed, epoch); DDP-aware: all ranks build the same epoch plan and each takes a
disjoint share (P / world_size identities) of every global batch, so the ranks' shares of one step
together form exactly one P x K batch and all ranks run the same number of steps.

Each element yielded is ``(tracklet_index, sample_seed)``: the dataset seeds that clip's frame
sampling and augmentation from ``sample_seed``, so a batch's content does not depend on the number
of loader workers, and a resumed epoch repeats the same clips.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def max_full_batches(chunks_per_id: Sequence[int], ids_per_batch: int) -> int:
    """Largest b such that b batches of ``ids_per_batch`` distinct identities can be filled when
    identity i contributes at most ``chunks_per_id[i]`` chunks (at most one per batch)."""
    counts = np.asarray(chunks_per_id, dtype=np.int64)
    best = 0
    for b in range(1, int(counts.sum()) // ids_per_batch + 1):
        if np.minimum(counts, b).sum() >= ids_per_batch * b:
            best = b
        else:
            break   # the condition is monotone: once it fails it fails for every larger b
    return best


class IdentityBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of P identities x K tracklets over ``labels`` (one label per tracklet).

    Args:
        labels: identity label of every tracklet of the training set.
        batch_size: clips per global batch over all ranks (``SOLVER.IMS_PER_BATCH`` = P x K).
        num_instances: K, tracklets per identity in a batch (``DATALOADER.NUM_INSTANCE``); identities
            with fewer tracklets are filled up by drawing their tracklets again.
        seed: ``SOLVER.SEED``; the epoch plan depends only on (seed, epoch).
        rank, world_size: this process's share of each global batch.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, num_instances: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({batch_size}) must be a multiple of DATALOADER.NUM_INSTANCE ({num_instances})."
            )
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Invalid rank {rank} for world size {world_size}")
        if self.ids_per_batch % world_size:
            raise ValueError(
                f"P = SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = {self.ids_per_batch} identities per batch cannot be "
                f"shared by {world_size} processes; make P a multiple of the number of processes."
            )
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        groups: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            groups[int(label)].append(index)
        self.identities = sorted(groups)
        self.members = [np.asarray(groups[pid], dtype=np.int64) for pid in self.identities]
        self.chunks_per_id = np.array([max(1, len(m) // num_instances) for m in self.members], dtype=np.int64)
        self.num_batches = max_full_batches(self.chunks_per_id, self.ids_per_batch)
        if self.num_batches == 0:
            raise ValueError(
                f"The training set has {len(self.identities)} identities but a batch needs P = {self.ids_per_batch} "
                f"distinct identities (SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE); lower SOLVER.IMS_PER_BATCH."
            )

    def set_epoch(self, epoch: int) -> None:
        """Call before every epoch (also on resume) so that each epoch draws a new plan."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Global batches of one epoch: (tracklet indices, sample seeds), both (num_batches, P*K).

        Identity i is used u_i = min(chunks_i, num_batches) times; a few uses are dropped at random
        so that exactly P * num_batches remain. Laying the uses out identity by identity and dealing
        them round-robin to the batches puts each identity at most once in every batch.
        """
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), 0x5A5]))
        uses = np.minimum(self.chunks_per_id, self.num_batches)
        excess = int(uses.sum()) - self.ids_per_batch * self.num_batches
        if excess:
            owners = np.repeat(np.arange(len(uses)), uses)
            dropped = rng.choice(len(owners), size=excess, replace=False)
            uses = uses - np.bincount(owners[dropped], minlength=len(uses))
        order = rng.permutation(len(self.identities))
        chunks: list[np.ndarray] = []
        for identity in order:
            if uses[identity]:
                chunks.extend(self._identity_chunks(identity, int(uses[identity]), rng))
        k = self.num_instances
        slots = np.stack(chunks)                                     # (P*num_batches, K)
        # Round-robin: use j goes to batch j mod num_batches.
        batches = slots.reshape(self.ids_per_batch, self.num_batches, k).transpose(1, 0, 2)
        batches = batches[rng.permutation(self.num_batches)].reshape(self.num_batches, self.ids_per_batch * k)
        seeds = rng.integers(0, 2**31 - 1, size=batches.shape, dtype=np.int64)
        return batches, seeds

    def _identity_chunks(self, identity: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
        members = self.members[identity]
        k = self.num_instances
        shuffled = members[rng.permutation(len(members))]
        if len(members) < k:
            # Every tracklet once, the rest drawn again (with replacement).
            extra = shuffled[rng.integers(0, len(members), size=k - len(members))]
            return [np.concatenate([shuffled, extra])]
        return list(shuffled[: count * k].reshape(count, k))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches, seeds = self.epoch_plan(self.epoch)
        share = self.ids_per_batch // self.world_size * self.num_instances
        lo, hi = self.rank * share, (self.rank + 1) * share
        for indices, sample_seeds in zip(batches[:, lo:hi], seeds[:, lo:hi]):
            yield [(int(i), int(s)) for i, s in zip(indices, sample_seeds)]
