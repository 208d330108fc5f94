"""One loss builder: every weight comes from ``cfg.LOSS``; a weight of 0 turns its term off."""
from __future__ import annotations

from typing import Callable

import torch

from loss.shape import shape_prior_loss
from loss.softmax import memory_loss, stacked_label_smoothed_cross_entropy
from loss.triplet import stacked_batch_hard_triplet

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

    def __init__(self, cfg, num_classes: int, device: torch.device | str | None = None):
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
        # Made on the training device once: a host tensor moved there in every step is a copy from
        # pageable memory, which waits for the GPU to drain its queue (a host sync per step).
        self.prior_mean = torch.tensor(lc.SHAPE_PRIOR_MEAN, dtype=torch.float32, device=device)
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
        # Terms of one kind share a kernel call: every label-smoothed CE (clip and frame logits) is one
        # cross-entropy over concatenated rows, every triplet one stacked distance computation.
        ce_logits: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}  # term -> (logits, labels, factor)
        if self.id_weight > 0:
            for name, logits in outputs.get("id_logits", {}).items():
                self._check_classes(f"id_logits[{name!r}]", logits)
                ce_logits[f"id_{name}"] = (logits, labels, self.id_weight)
        for term, key, weight in (("frame_id", "frame_logits", self.frame_id_weight),
                                  ("shape_id", "framewise_shape_logits", self.shape_id_weight)):
            if weight > 0 and key in outputs:
                self._check_classes(key, outputs[key])
                framewise = outputs[key]
                if framewise.dim() != 3 or labels.shape != framewise.shape[:1]:
                    raise ValueError(f"expected {key} (B, T, C) and labels (B,), got {tuple(framewise.shape)} and "
                                     f"{tuple(labels.shape)}")
                b, t, c = framewise.shape
                # LS-CE over all B·T frames, divided by T (see framewise_cross_entropy).
                ce_logits[term] = (framewise.reshape(b * t, c), labels.repeat_interleave(t), weight / t)
        ce_values = {}
        if ce_logits:
            stacked = stacked_label_smoothed_cross_entropy([v[0] for v in ce_logits.values()],
                                                           [v[1] for v in ce_logits.values()], self.epsilon)
            ce_values = {term: factor * value for (term, (_, _, factor)), value in zip(ce_logits.items(), stacked)}

        terms: dict[str, torch.Tensor] = {k: v for k, v in ce_values.items() if k.startswith("id_")}
        if self.triplet_weight > 0 and outputs.get("triplet_feats"):
            feats = outputs["triplet_feats"]
            values = stacked_batch_hard_triplet(list(feats.values()), labels, self.margin)
            for name, value in zip(feats, values):
                terms[f"tri_{name}"] = self.triplet_weight * value
        if self.memory_weight > 0 and "memory_logits" in outputs:
            self._check_classes("memory_logits", outputs["memory_logits"])
            terms["memory"] = self.memory_weight * memory_loss(outputs["memory_logits"], labels)
        for term in ("frame_id", "shape_id"):
            if term in ce_values:
                terms[term] = ce_values[term]
        if self.shape_prior_weight > 0 and "betas" in outputs:
            terms["shape_prior"] = self.shape_prior_weight * shape_prior_loss(outputs["betas"], self.prior_mean)
        if terms:
            total = torch.stack(list(terms.values())).sum()
        else:  # every term off: a plain zero on the labels' device (nothing to backpropagate)
            total = torch.zeros((), device=labels.device)
        return total, terms


def build_loss(cfg, num_classes: int, device: torch.device | str | None = None) -> LossFn:
    """The training loss of SASModel from ``cfg.LOSS`` (see :class:`SASLoss`) for outputs on ``device``
    (default CPU; any other device works, at the cost of a copy per step); one compiled graph when
    MODEL.COMPILE (mode MODEL.COMPILE_MODE)."""
    loss = SASLoss(cfg, num_classes, device)
    if cfg.MODEL.COMPILE:
        from model.build import compile_options

        return torch.compile(loss.__call__, **compile_options(cfg.MODEL.COMPILE_MODE))
    return loss
