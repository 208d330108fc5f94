"""A tiny demo-model checkpoint (freshly built, saved through utils.checkpoint) on tiny synthetic data,
shared by the inference API, search and export tests."""
from __future__ import annotations

import os
import shutil

import torch

from datasets.build import build_dataset
from model.build import build_model
from tests.datasets_fixtures import make_tiny_root, tiny_cfg
from utils.checkpoint import load_checkpoint, save_checkpoint

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiny_checkpoint(folder) -> tuple[str, str]:
    """(data root, checkpoint path): the demo config at 32x16 frames, 4-frame clips, random weights.

    BatchNorm running statistics are randomised so the BNNecks are not the identity.
    """
    root = make_tiny_root(folder)
    cfg = tiny_cfg(root, "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]")
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
    return root, path


def make_nan_checkpoint(checkpoint: str, path: str) -> str:
    """A copy of ``checkpoint`` whose floating-point weights are all NaN (a diverged run): every embedding
    it produces is NaN. Returns ``path``."""
    state = load_checkpoint(checkpoint)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    save_checkpoint(state, path)
    return path


def split_tracklets_in_halves(root: str, out: str) -> tuple[str, str, list[str]]:
    """Copy every test tracklet of case 3 (aerial) with >= 4 frames into plain folders: its first half of
    frames to ``out/query/person<i>`` and its second half to ``out/gallery/<subdir>/clip<i>.d`` (renamed
    ``frame<j>.jpg``), so the true match of query i is gallery clip i. Returns (query dir, gallery dir, names)."""
    query_dir, gallery_dir = os.path.join(out, "query"), os.path.join(out, "gallery")
    names = []
    tracklets = []
    for case_dir in sorted(os.listdir(root)):
        if not case_dir.startswith("case"):
            continue
        for part in ("query", "gallery"):
            base = os.path.join(root, case_dir, part)
            for pid in sorted(os.listdir(base)):
                for name in sorted(os.listdir(os.path.join(base, pid))):
                    folder = os.path.join(base, pid, name)
                    frames = sorted(os.listdir(folder))
                    if len(frames) >= 4 and name not in {n for n, _ in tracklets}:
                        tracklets.append((name, [os.path.join(folder, f) for f in frames]))
    for i, (_, frames) in enumerate(tracklets):
        half = len(frames) // 2
        for target, chosen in ((os.path.join(query_dir, f"person{i}"), frames[:half]),
                               (os.path.join(gallery_dir, f"group{i % 2}", f"clip{i}.d"), frames[half:])):
            os.makedirs(target, exist_ok=True)
            for j, frame in enumerate(chosen):
                shutil.copyfile(frame, os.path.join(target, f"frame{j}.jpg"))
        names.append(f"person{i}")
    return query_dir, gallery_dir, names
