"""Optimizer with per-parameter-group learning rates and weight decay (all numbers from SOLVER.*)."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from torch import nn

from model.backbone import NEW_PARAMETER_NAMES

BACKBONE_PREFIX = "backbone."


def parameter_groups(
    model: nn.Module,
    base_lr: float,
    backbone_lr: float,
    bias_lr_factor: float,
    head_lr_factor: float,
    weight_decay: float,
    weight_decay_bias: float,
    head_prefixes: Sequence[str] = (),
    new_backbone_names: Sequence[str] = (),
    backbone_bias_lr_factor: float = 1.0,
    bias_name_match: str = "substring",
) -> list[dict]:
    """Group trainable parameters by (lr, weight decay); frozen parameters are left out.

    backbone.* -> ``backbone_lr`` except the randomly initialised additions named in
    ``new_backbone_names`` (the SIE tables), which learn at ``base_lr`` like every head. Biases get
    ``weight_decay_bias`` and their LR x ``bias_lr_factor``, or x ``backbone_bias_lr_factor`` for the
    pretrained encoder's biases (1 = the backbone LR, as the authors). Parameters under
    ``head_prefixes`` x ``head_lr_factor``. Each group carries the names of its parameters for inspection.
    ``bias_name_match``: a bias is a name holding "bias" anywhere ("substring", the authors': the GRUs'
    ``bias_ih_l0`` / ``bias_hh_l0`` too) or ending in it ("suffix").
    """
    if bias_name_match not in ("substring", "suffix"):
        raise ValueError(f"SOLVER.BIAS_NAME_MATCH must be 'substring' or 'suffix', got {bias_name_match!r}")
    grouped: dict[tuple[float, float], list[tuple[str, nn.Parameter]]] = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        pretrained = name.startswith(BACKBONE_PREFIX) and not name[len(BACKBONE_PREFIX):].startswith(
            tuple(new_backbone_names))
        lr = backbone_lr if pretrained else base_lr
        decay = weight_decay
        if ("bias" in name) if bias_name_match == "substring" else name.endswith("bias"):
            lr *= backbone_bias_lr_factor if pretrained else bias_lr_factor
            decay = weight_decay_bias
        if any(name.startswith(prefix) for prefix in head_prefixes):
            lr *= head_lr_factor
        grouped[(lr, decay)].append((name, param))
    return [
        {"params": [p for _, p in items], "names": [n for n, _ in items], "lr": lr, "initial_lr": lr,
         "weight_decay": decay}
        for (lr, decay), items in sorted(grouped.items())
    ]


# Classifiers that SOLVER.HEAD_LR_CLASSIFIERS may name: "<name>" means the SAS model's "classifier_<name>".
HEAD_CLASSIFIER_NAMES = ("appearance", "tp", "frame", "shape", "framewise_shape")


def head_lr_prefixes(names: Sequence[str]) -> tuple[str, ...]:
    """Parameter-name prefixes of the classifiers named in SOLVER.HEAD_LR_CLASSIFIERS (``tp`` -> ``classifier_tp.``)."""
    unknown = [n for n in names if n not in HEAD_CLASSIFIER_NAMES]
    if unknown:
        raise ValueError(f"SOLVER.HEAD_LR_CLASSIFIERS has unknown classifier(s) {unknown}; "
                         f"use names from {list(HEAD_CLASSIFIER_NAMES)}")
    return tuple(f"classifier_{n}." for n in names)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over :func:`parameter_groups` built from ``cfg.SOLVER``."""
    solver = cfg.SOLVER
    groups = parameter_groups(
        model,
        base_lr=solver.BASE_LR,
        backbone_lr=solver.BACKBONE_LR,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        head_lr_factor=solver.HEAD_LR_FACTOR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        head_prefixes=head_lr_prefixes(solver.HEAD_LR_CLASSIFIERS),
        new_backbone_names=NEW_PARAMETER_NAMES,
        backbone_bias_lr_factor=solver.BACKBONE_BIAS_LR_FACTOR,
        bias_name_match=solver.BIAS_NAME_MATCH,
    )
    if not groups:
        raise ValueError("The model has no trainable parameters; check the MODEL.* freeze options")
    name = solver.OPTIMIZER.lower()
    # One fused kernel per parameter group (CPU and CUDA): the heads add ~100M parameters, and the
    # per-tensor loop of the default implementation makes the optimizer step a visible cost.
    if name == "adam":
        return torch.optim.Adam(groups, lr=solver.BASE_LR, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=solver.BASE_LR, fused=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)
    raise ValueError(f"SOLVER.OPTIMIZER must be Adam, AdamW or SGD, got {solver.OPTIMIZER!r}")
