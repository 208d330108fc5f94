"""Cost of the SAS heads: a full SAS training step vs a backbone-only training step, same run.

Both steps use the same batch (default 2 clips x 8 frames, ViT-B/16 at 256x128, fp32, random
weights) and run through the training step of train.py (processor.step.TrainStep, built from the
config as the trainer builds it). The backbone-only step trains the CLIP tower, the time-mean of the
class token and one linear classifier with CE and Adam (bench/gpu_step.py's BackboneOnly). The SAS
step is the real thing: SASModel forward (memory, MGTM, PRSD), every loss term, backward, Adam step
and the memory update. Timings alternate between the two so machine noise hits both alike.

    python bench/train_step.py [--backbone ViT-B-16] [--clips 2] [--frames 8] [--repeats 3] [KEY VALUE ...]

(KEY VALUE: config overrides, e.g. a tiny model for a smoke test.)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.gpu_step import BackboneOnly, backbone_only_loss  # noqa: E402
from configs import load_config  # noqa: E402
from loss.build import build_loss  # noqa: E402
from model.build import build_model  # noqa: E402
from processor.encoding import camera_views  # noqa: E402
from processor.step import TrainStep  # noqa: E402
from solver.optimizer import build_optimizer  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    device = torch.device("cpu")
    cfg = load_config(None, [
        "MODEL.BACKBONE", args.backbone, "MODEL.DEVICE", "cpu", "SOLVER.AMP", "off",
        "INPUT.SIZE_TRAIN", f"[{args.height},{args.width}]", "INPUT.SIZE_TEST", f"[{args.height},{args.width}]",
        "DATALOADER.SEQ_LEN", str(args.frames), *args.opts,
    ])
    model = build_model(cfg, num_classes=args.classes, num_cameras=3).train()
    sas_step = TrainStep.from_config(cfg, model, build_loss(cfg, args.classes), build_optimizer(cfg, model), device)
    baseline = BackboneOnly(model.backbone, args.classes).train()
    base_optimizer = torch.optim.Adam([p for p in baseline.parameters() if p.requires_grad],
                                      lr=cfg.SOLVER.BACKBONE_LR, fused=True)  # as build_optimizer
    backbone_step = TrainStep.from_config(cfg, baseline, backbone_only_loss, base_optimizer, device)

    b, t = args.clips, args.frames
    camids = torch.randint(0, 3, (b,))
    batch = {"frames": torch.randn(b, t, 3, args.height, args.width), "camids": camids,
             "views": camera_views(camids), "labels": torch.arange(b) % args.classes}

    def timed(step: TrainStep) -> float:
        start = time.perf_counter()
        step(batch)
        return time.perf_counter() - start

    backbone_step(batch), sas_step(batch)  # warm-up (allocations, lazy init)
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
    return {"backbone_step_s": base, "sas_step_s": sas}


if __name__ == "__main__":
    main()
