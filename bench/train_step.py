"""Cost of the SAS heads: a full SAS training step vs a backbone-only training step, same run.

Both steps use the same batch (default 2 clips x 8 frames, ViT-B/16 at 256x128, fp32, random
weights) and the same optimizer settings. The backbone-only step is forward through the CLIP
tower, time-mean of the class token, one linear classifier, CE, backward, Adam step. The SAS step is
the real thing: SASModel forward (memory, MGTM, PRSD), every loss term, backward, Adam step and
the memory update. Timings alternate between the two so machine noise hits both alike.

    python bench/train_step.py [--backbone ViT-B-16] [--clips 2] [--frames 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config  # noqa: E402
from loss.build import build_loss  # noqa: E402
from model.build import build_model  # noqa: E402
from solver.optimizer import build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cfg = load_config(None, [
        "MODEL.BACKBONE", args.backbone, "MODEL.DEVICE", "cpu", "SOLVER.AMP", "off",
        "INPUT.SIZE_TRAIN", f"[{args.height},{args.width}]", "INPUT.SIZE_TEST", f"[{args.height},{args.width}]",
        "DATALOADER.SEQ_LEN", str(args.frames),
    ])
    model = build_model(cfg, num_classes=args.classes, num_cameras=3).train()
    loss_fn = build_loss(cfg, args.classes)
    optimizer = build_optimizer(cfg, model)

    backbone = model.backbone
    classifier = torch.nn.Linear(backbone.width, args.classes, bias=False)
    base_params = [p for p in backbone.parameters() if p.requires_grad] + list(classifier.parameters())
    base_optimizer = torch.optim.Adam(base_params, lr=cfg.SOLVER.BACKBONE_LR, fused=True)  # as build_optimizer

    b, t = args.clips, args.frames
    frames = torch.randn(b, t, 3, args.height, args.width)
    camids = torch.randint(0, 3, (b,))
    views = (camids > 0).long()
    labels = torch.arange(b) % args.classes

    def backbone_step() -> None:
        tokens, _ = backbone(frames.flatten(0, 1), camids.repeat_interleave(t), views.repeat_interleave(t))
        feat = tokens[:, 0].reshape(b, t, -1).mean(1)
        loss = F.cross_entropy(classifier(feat), labels)
        base_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        base_optimizer.step()

    def sas_step() -> None:
        outputs = model(frames, camids, views, labels)
        total, _ = loss_fn(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if model.memory is not None:
            model.memory.update(outputs["memory_feat"].detach(), labels)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    backbone_step(), sas_step()  # warm-up (allocations, lazy init)
    base_times, sas_times = [], []
    for _ in range(args.repeats):
        base_times.append(timed(backbone_step))
        sas_times.append(timed(sas_step))
    base, sas = statistics.median(base_times), statistics.median(sas_times)
    print(f"device cpu, threads {torch.get_num_threads()}, {args.backbone} {args.height}x{args.width}, "
          f"batch {b} clips x {t} frames, fp32, median of {args.repeats}")
    print(f"backbone-only step: {base:.3f} s")
    print(f"full SAS step:      {sas:.3f} s")
    print(f"ratio SAS / backbone: {sas / base:.3f}  (target <= 1.30)")


if __name__ == "__main__":
    main()
