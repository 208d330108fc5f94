"""Batch-hard triplet loss (Euclidean), correct for any number of positives per identity."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """features (B, d) -> (B, B) Euclidean distances (squared distance clamped at 1e-12 before sqrt)."""
    squared = features.pow(2).sum(dim=1)
    dist2 = squared[:, None] + squared[None, :] - 2.0 * features @ features.t()
    return dist2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """mean over anchors of relu(max_pos d(a,p) − min_neg d(a,n) + margin).

    features (B, d); labels (B,). Hardest positive and negative are found with masks, not by
    reshaping the batch, so identities may have unequal numbers of samples. An anchor without another
    sample of its identity, or without any sample of another identity, has no triplet and is left out
    of the mean; a batch without any valid anchor gives 0 (still attached to the graph).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"expected features (B, d) and labels (B,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    dist = pairwise_euclidean(features.float())
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    hardest_pos = dist.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_neg = dist.masked_fill(~negative, float("inf")).min(dim=1).values
    valid = positive.any(dim=1) & negative.any(dim=1)
    per_anchor = F.relu(hardest_pos - hardest_neg + margin)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / valid.sum().clamp_min(1)
