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


def stacked_batch_hard_triplet(features: list[torch.Tensor], labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """:func:`batch_hard_triplet` of several feature sets of the same batch in one computation.

    features: n tensors (B, d_i) (widths may differ); labels (B,) -> (n,) losses. The sets are
    zero-padded to the widest (zero columns change no distance) and stacked, so the distances,
    masks and hardest-pair searches of all sets run as one batched kernel each.
    """
    if not features:
        raise ValueError("stacked_batch_hard_triplet needs at least one feature set")
    for feats in features:
        if feats.dim() != 2 or labels.shape != feats.shape[:1]:
            raise ValueError(
                f"expected features (B, d) and labels (B,), got {tuple(feats.shape)} and {tuple(labels.shape)}"
            )
    widest = max(f.shape[1] for f in features)
    stacked = torch.stack([F.pad(f.float(), (0, widest - f.shape[1])) for f in features])  # (n, B, d)
    squared = stacked.pow(2).sum(dim=2)                                                      # (n, B)
    gram = torch.bmm(stacked, stacked.transpose(1, 2))
    dist = (squared[:, :, None] + squared[:, None, :] - 2.0 * gram).clamp_min(1e-12).sqrt()  # (n, B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=2)
    hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=2)
    valid = positive.any(dim=1) & negative.any(dim=1)                                          # (B,)
    per_anchor = torch.where(valid, F.relu(hardest_pos - hardest_neg + margin), 0.0)
    return per_anchor.sum(dim=1) / valid.sum().clamp_min(1)
