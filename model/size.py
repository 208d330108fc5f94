"""Model size report: parameters per module, FLOPs per test clip, test-embedding width.

    python -m model.size --config_file configs/sas_vit_b16.yml [--num_classes 371] [KEY VALUE ...]

Nothing is downloaded and no weight file is read: the weight paths of the config are cleared
(sizes do not depend on weight values) and the model is built on the meta device, so even
ViT-L/14 costs no memory. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one
eval-mode clip of TEST.SEQ_LEN frames at INPUT.SIZE_TEST; it counts a multiply-add as 2 FLOPs
(tools such as fvcore / thop report multiply-adds, i.e. half of this figure, as "FLOPs").
On the meta device attention runs as plain matrix products and is counted; on CPU the fused
attention kernel is not known to the counter and its FLOPs would be missing (hence meta).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

# DetReIDXV1 identities (upper bound of the training classes; only the classifier rows depend on it).
DEFAULT_NUM_CLASSES = 371
# Ground, aerial session 1, aerial session 2.
DEFAULT_NUM_CAMERAS = 3

# Paper figures (per inference iteration) for comparison.
PAPER_FIGURES = {"ViT-B-16": (196.7, 74.3), "ViT-L-14": (435.9, 296.8)}


def _count(module: nn.Module) -> Dict[str, int]:
    params = list(module.parameters())
    return dict(total=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params if p.requires_grad),
                buffers=sum(b.numel() for b in module.buffers()))


def size_config(cfg):
    """A copy of ``cfg`` with every weight-file key cleared (sizes need no weights, nothing is read)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.PRETRAIN_PATH = ""
    cfg.MODEL.PRETRAIN_TAG = ""
    cfg.MODEL.PRSD.PRETRAINED = ""
    cfg.MODEL.PRSD.SMPL_MEAN_PARAMS = ""
    if cfg.MODEL.PRSD.SMPL_MODEL_PATH and not os.path.isfile(cfg.MODEL.PRSD.SMPL_MODEL_PATH):
        # SMPL has no parameters; without its file the decoding FLOPs are simply left out
        cfg.MODEL.PRSD.SMPL_MODEL_PATH = ""
        cfg.MODEL.PRSD.USE_BONE_LENGTHS = False
    cfg.freeze()
    return cfg


def model_size_report(cfg, num_classes: int = DEFAULT_NUM_CLASSES, num_cameras: int = DEFAULT_NUM_CAMERAS,
                      num_views: int = 2, device: str = "meta") -> dict:
    """Parameters per module and FLOPs of one eval clip (1, TEST.SEQ_LEN, 3, *INPUT.SIZE_TEST).

    Returns dict(rows=[(name, depth, total, trainable, flops)], total, trainable, inference (without
    classifiers), flops, embedding_dim, seq_len, image_size, backbone).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from model.build import build_model

    cfg = size_config(cfg)
    with torch.device(device):
        model = build_model(cfg, num_classes=num_classes, num_cameras=num_cameras, num_views=num_views)
    model.eval()
    seq_len = int(cfg.TEST.SEQ_LEN)
    height, width = (int(s) for s in cfg.INPUT.SIZE_TEST)
    frames = torch.zeros(1, seq_len, 3, height, width, device=device)
    camids = torch.zeros(1, dtype=torch.long, device=device)
    views = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    # Grad mode stays on (nothing is back-propagated): with it off, nn.MultiheadAttention and
    # nn.TransformerEncoderLayer switch to fused fast-path kernels that the counter does not know.
    with torch.enable_grad(), counter:
        model(frames, camids, views)
    per_module = counter.get_flop_counts()
    root = type(model).__name__

    def module_flops(path: str) -> int:
        """FLOPs inside a submodule; a container that is never called itself (ModuleList) sums its
        outermost called descendants (the counter's per-module figures include their children)."""
        key = f"{root}.{path}"
        if key in per_module:
            return int(sum(per_module[key].values()))
        inner = [k for k in per_module if k.startswith(key + ".")]
        outermost = [k for k in inner if not any(k.startswith(other + ".") for other in inner if other != k)]
        return int(sum(sum(per_module[k].values()) for k in outermost))

    rows: List[tuple] = []
    groups: Dict[str, list] = {}  # BNNecks and classifiers are summed into one row each
    for name, child in model.named_children():
        counts = _count(child)
        group = next((g for g in ("bottleneck", "classifier") if name.startswith(g)), None)
        if group:
            groups.setdefault(group, []).append((counts["total"], counts["trainable"], module_flops(name)))
            continue
        rows.append((name, 0, counts["total"], counts["trainable"], module_flops(name)))
        for sub_name, sub_child in child.named_children():
            sub = _count(sub_child)
            if sub["total"] or module_flops(f"{name}.{sub_name}"):
                rows.append((f"{name}.{sub_name}", 1, sub["total"], sub["trainable"], module_flops(f"{name}.{sub_name}")))
        own = list(child.parameters(recurse=False))
        if own:  # e.g. the backbone's class / positional embeddings, projection and SIE tables
            rows.append((f"{name} (own tensors)", 1, sum(p.numel() for p in own),
                         sum(p.numel() for p in own if p.requires_grad), 0))
    for group, members in groups.items():
        label = "BNNecks" if group == "bottleneck" else "classifiers (train only)"
        rows.append((f"{label} x{len(members)}", 0, *(sum(m[i] for m in members) for i in range(3))))
    totals = _count(model)
    classifier_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    return dict(rows=rows, total=totals["total"], trainable=totals["trainable"],
                inference=totals["total"] - classifier_params, flops=int(counter.get_total_flops()),
                embedding_dim=int(model.embedding_dim), seq_len=seq_len, image_size=(height, width),
                backbone=cfg.MODEL.BACKBONE, num_classes=num_classes)


def format_report(report: dict) -> str:
    """The report as a text table."""
    lines = [f"backbone {report['backbone']}, clip {report['seq_len']} x {report['image_size'][0]}x"
             f"{report['image_size'][1]}, {report['num_classes']} classes",
             f"{'module':40s} {'params (M)':>11s} {'trainable (M)':>14s} {'GFLOPs/clip':>12s}"]
    for name, depth, total, trainable, flops in report["rows"]:
        label = ("  " * depth + name)[:40]
        lines.append(f"{label:40s} {total / 1e6:11.3f} {trainable / 1e6:14.3f} {flops / 1e9:12.2f}")
    lines.append(f"{'total':40s} {report['total'] / 1e6:11.3f} {report['trainable'] / 1e6:14.3f} "
                 f"{report['flops'] / 1e9:12.2f}")
    lines.append(f"{'inference (without classifiers)':40s} {report['inference'] / 1e6:11.3f}")
    lines.append(f"GFLOPs per clip: {report['flops'] / 1e9:.2f} (= {report['flops'] / 2e9:.2f} G multiply-adds); "
                 f"per frame {report['flops'] / report['seq_len'] / 1e9:.2f}")
    lines.append(f"test embedding width: {report['embedding_dim']}")
    paper = PAPER_FIGURES.get(report["backbone"])
    if paper:
        lines.append(f"paper: {paper[0]}M parameters, {paper[1]} GFLOPs per inference iteration")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Parameters, GFLOPs per clip and embedding width of a config.")
    parser.add_argument("--config_file", default=None, help="YAML config (defaults when omitted)")
    parser.add_argument("--num_classes", type=int, default=DEFAULT_NUM_CLASSES,
                        help=f"training identities (classifier rows; default {DEFAULT_NUM_CLASSES})")
    parser.add_argument("--num_cameras", type=int, default=DEFAULT_NUM_CAMERAS, help="SIE camera table rows")
    parser.add_argument("--device", default="meta", help="meta (no memory, default) or cpu")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    from configs import load_config

    logging.getLogger("model.backbone").setLevel(logging.ERROR)  # "random init" is the point here
    cfg = load_config(args.config_file, args.opts)
    report = model_size_report(cfg, args.num_classes, args.num_cameras, device=args.device)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
