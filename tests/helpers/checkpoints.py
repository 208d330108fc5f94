"""Checkpoints of the tiny demo model, saved through utils.checkpoint like training saves them."""
from __future__ import annotations

import os

import torch

from datasets.build import build_dataset
from model.build import build_model
from tests.helpers.data import make_tiny_cfg
from utils.checkpoint import load_checkpoint, save_checkpoint


def make_tiny_checkpoint(root: str, folder) -> str:
    """A checkpoint of the demo model on ``root`` at 32x16 frames, 4-frame clips, random weights, saved as
    ``folder``/tiny_model.pth; -> its path. BatchNorm running statistics are randomised so that the BNNecks
    are not the identity."""
    cfg = make_tiny_cfg(root, "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]")
    dataset = build_dataset(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=dataset.num_train_pids, num_cameras=dataset.num_cameras)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    path = os.path.join(str(folder), "tiny_model.pth")
    save_checkpoint({"model": model.state_dict(), "config": cfg.dump(), "epoch": 1,
                     "meta": {"num_classes": dataset.num_train_pids, "num_cameras": dataset.num_cameras}}, path)
    return path


def make_nan_checkpoint(checkpoint: str, path: str) -> str:
    """A copy of ``checkpoint`` whose floating-point weights are all NaN (a diverged run): every embedding
    it produces is NaN. -> ``path``."""
    state = load_checkpoint(checkpoint)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    save_checkpoint(state, path)
    return path
