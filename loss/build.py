"""One loss builder: every weight comes from ``cfg.LOSS``; a weight of 0 turns its term off."""
from __future__ import annotations

from typing import Callable

import torch

from loss.shape import shape_prior_loss
from loss.softmax import framewise_cross_entropy, label_smoothed_cross_entropy, memory_loss
from loss.triplet import batch_hard_triplet

LossFn = Callable[[dict, torch.Tensor], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class SASLoss:
    """(outputs of SASModel's train forward, labels (B,)) -> (total, {term name: weighted value}).

    Terms (each only when its weight is > 0 and the model produced the output it needs):
      id_<name>    LOSS.ID_WEIGHT · LS-CE(id_logits[name])          (appearance, tp, shape)
      tri_<name>   LOSS.TRIPLET_WEIGHT · batch-hard triplet(triplet_feats[name])  (cls, proj, tp, shape)
      memory       LOSS.MEMORY_WEIGHT · mean over proxy sets of CE(memory_logits)
      frame_id     LOSS.FRAME_ID_WEIGHT · LS-CE(frame_logits, labels repeated T) / T
      shape_id     LOSS.SHAPE_ID_WEIGHT · LS-CE(framewise_shape_logits, labels repeated T) / T
      shape_prior  LOSS.SHAPE_PRIOR_WEIGHT · MSE(betas, LOSS.SHAPE_PRIOR_MEAN)
    The logged values are the weighted terms, so they sum to the total.
    """

    def __init__(self, cfg, num_classes: int):
        lc = cfg.LOSS
        self.num_classes = num_classes
        self.id_weight = lc.ID_WEIGHT
        self.triplet_weight = lc.TRIPLET_WEIGHT
        self.memory_weight = lc.MEMORY_WEIGHT
        self.frame_id_weight = lc.FRAME_ID_WEIGHT
        self.shape_id_weight = lc.SHAPE_ID_WEIGHT
        self.shape_prior_weight = lc.SHAPE_PRIOR_WEIGHT
        self.epsilon = lc.LABEL_SMOOTH
        self.margin = lc.TRIPLET_MARGIN
        self.prior_mean = torch.tensor(lc.SHAPE_PRIOR_MEAN, dtype=torch.float32)
        for key in ("ID_WEIGHT", "TRIPLET_WEIGHT", "MEMORY_WEIGHT", "FRAME_ID_WEIGHT", "SHAPE_ID_WEIGHT",
                    "SHAPE_PRIOR_WEIGHT"):
            if lc[key] < 0:
                raise ValueError(f"LOSS.{key} must be >= 0 (0 turns the term off), got {lc[key]}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"LOSS.LABEL_SMOOTH must be in [0, 1), got {self.epsilon}")

    def _check_classes(self, name: str, logits: torch.Tensor) -> None:
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"{name} has {logits.shape[-1]} classes but the loss was built for {self.num_classes}; "
                "build the model and the loss with the same number of training identities"
            )

    def __call__(self, outputs: dict, labels: torch.Tensor):
        terms: dict[str, torch.Tensor] = {}
        if self.id_weight > 0:
            for name, logits in outputs.get("id_logits", {}).items():
                self._check_classes(f"id_logits[{name!r}]", logits)
                terms[f"id_{name}"] = self.id_weight * label_smoothed_cross_entropy(logits, labels, self.epsilon)
        if self.triplet_weight > 0:
            for name, feats in outputs.get("triplet_feats", {}).items():
                terms[f"tri_{name}"] = self.triplet_weight * batch_hard_triplet(feats, labels, self.margin)
        if self.memory_weight > 0 and "memory_logits" in outputs:
            self._check_classes("memory_logits", outputs["memory_logits"])
            terms["memory"] = self.memory_weight * memory_loss(outputs["memory_logits"], labels)
        if self.frame_id_weight > 0 and "frame_logits" in outputs:
            self._check_classes("frame_logits", outputs["frame_logits"])
            terms["frame_id"] = self.frame_id_weight * framewise_cross_entropy(
                outputs["frame_logits"], labels, self.epsilon)
        if self.shape_id_weight > 0 and "framewise_shape_logits" in outputs:
            self._check_classes("framewise_shape_logits", outputs["framewise_shape_logits"])
            terms["shape_id"] = self.shape_id_weight * framewise_cross_entropy(
                outputs["framewise_shape_logits"], labels, self.epsilon)
        if self.shape_prior_weight > 0 and "betas" in outputs:
            terms["shape_prior"] = self.shape_prior_weight * shape_prior_loss(outputs["betas"], self.prior_mean)
        if terms:
            total = torch.stack(list(terms.values())).sum()
        else:  # every term off: a plain zero on the labels' device (nothing to backpropagate)
            total = torch.zeros((), device=labels.device)
        return total, terms


def build_loss(cfg, num_classes: int) -> LossFn:
    """The training loss of SASModel from ``cfg.LOSS`` (see :class:`SASLoss`)."""
    return SASLoss(cfg, num_classes)
