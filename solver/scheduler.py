"""Epoch-based LR schedules: linear warmup, then multi-step (the paper's) or cosine."""
from __future__ import annotations

import bisect
import math
from functools import partial
from typing import Sequence

import torch


def lr_factor(
    epoch: int,
    kind: str,
    max_epochs: int,
    warmup_epochs: int,
    warmup_factor: float,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    cosine_final_factor: float = 0.0,
) -> float:
    """Multiplier of the initial LR during 0-based ``epoch``.

    Warmup rises linearly from ``warmup_factor`` (epoch 0) towards 1 (epoch ``warmup_epochs``).
    Multistep multiplies by ``gamma`` once per milestone reached (epoch index >= milestone).
    Cosine decays from 1 after warmup to ``cosine_final_factor`` at the last epoch.
    """
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warm = warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if kind == "multistep":
        return warm * gamma ** bisect.bisect_right(sorted(steps), epoch)
    if kind == "cosine":
        if epoch < warmup_epochs:
            return warm
        span = max(1, max_epochs - 1 - warmup_epochs)
        progress = min(1.0, (epoch - warmup_epochs) / span)
        return cosine_final_factor + (1 - cosine_final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"SOLVER.SCHEDULER must be multistep or cosine, got {kind!r}")


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per epoch (``scheduler.step()`` after each epoch)."""
    s = cfg.SOLVER
    lr_factor(0, s.SCHEDULER.lower(), s.MAX_EPOCHS, 0, 1.0)  # validates the name early
    factor = partial(
        lr_factor,
        kind=s.SCHEDULER.lower(),
        max_epochs=s.MAX_EPOCHS,
        warmup_epochs=s.WARMUP_EPOCHS,
        warmup_factor=s.WARMUP_FACTOR,
        steps=tuple(s.STEPS),
        gamma=s.GAMMA,
        cosine_final_factor=s.COSINE_FINAL_FACTOR,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
