"""Label-smoothed cross-entropy and the multi-proxy memory loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Mean over samples of CE against the target (1−ε)·onehot(y) + ε/C.

    logits (N, C); labels (N,) long. torch's ``label_smoothing=ε`` uses exactly this target
    (tests/test_loss.py checks it against the explicit formula). Computed in float32 so that
    fp16/bf16 autocast logits do not lose the small ε/C terms.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"LOSS.LABEL_SMOOTH must be in [0, 1), got {epsilon}")
    return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)


def memory_loss(memory_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over proxy sets of the CE over identities (½(CE mean + CE hard) for two proxies).

    memory_logits (B, N, C) already divided by the temperature; labels (B,).
    """
    if memory_logits.dim() != 3 or labels.shape != memory_logits.shape[:1]:
        raise ValueError(
            f"expected memory logits (B, N, C) and labels (B,), got {tuple(memory_logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    b, n, c = memory_logits.shape
    # Mean over all (sample, proxy set) pairs = mean over proxy sets of the per-set batch mean.
    return F.cross_entropy(memory_logits.float().reshape(b * n, c), labels.repeat_interleave(n))


def framewise_cross_entropy(frame_logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """LS-CE of per-frame logits with the clip label repeated, divided by T (method.md, literally).

    frame_logits (B, T, C); labels (B,). The LS-CE is the mean over all B·T frames, and the result is
    then divided by T as method.md's total loss writes it (LS-CE(frame logits, labels repeated T)/T),
    so the term's effective weight is its config weight / T (1/8 at the paper's T=8).
    """
    if frame_logits.dim() != 3 or labels.shape != frame_logits.shape[:1]:
        raise ValueError(
            f"expected frame logits (B, T, C) and labels (B,), got {tuple(frame_logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    b, t, c = frame_logits.shape
    return label_smoothed_cross_entropy(frame_logits.reshape(b * t, c), labels.repeat_interleave(t), epsilon) / t


def stacked_label_smoothed_cross_entropy(logits: list[torch.Tensor], labels: list[torch.Tensor],
                                         epsilon: float = 0.1) -> torch.Tensor:
    """:func:`label_smoothed_cross_entropy` of several (logits (N_i, C), labels (N_i,)) pairs with the
    same C in one cross-entropy call -> (n,) per-pair means (rows concatenated, then averaged per pair)."""
    if not logits or len(logits) != len(labels):
        raise ValueError("stacked_label_smoothed_cross_entropy needs matching, non-empty lists of logits and labels")
    for lg, lb in zip(logits, labels):
        if lg.dim() != 2 or lb.shape != lg.shape[:1] or lg.shape[1] != logits[0].shape[1]:
            raise ValueError(f"expected logits (N, C) with one C and labels (N,), got {tuple(lg.shape)} and "
                             f"{tuple(lb.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"LOSS.LABEL_SMOOTH must be in [0, 1), got {epsilon}")
    rows = F.cross_entropy(torch.cat([lg.float() for lg in logits]), torch.cat(labels), label_smoothing=epsilon,
                           reduction="none")
    if all(lg.shape[0] == logits[0].shape[0] for lg in logits):  # equal sizes: one mean over a view
        return rows.view(len(logits), -1).mean(dim=1)
    return torch.stack([part.mean() for part in rows.split([lg.shape[0] for lg in logits])])
