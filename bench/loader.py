"""Training-loader throughput: our clip pipeline vs a naive per-frame PIL + torchvision pipeline.

    python -m bench.loader [--root DIR] [--workers 2] [--batches 30] [--size 256 128]

Both pipelines read the same P x K batches (same identity sampler, same restricted random frame
sampling, same worker count) and apply the same kinds of augmentation (flip, hue jitter p=0.5,
random erasing p=0.5, bicubic resize, normalisation). Ours decodes with OpenCV and augments whole
clips at once; the naive one opens each frame with PIL and runs torchvision transforms frame by
frame (as the authors' loaders do). Prints clips/s of each and the ratio. Without --root it first
generates the demo-sized synthetic dataset in a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config  # noqa: E402
from datasets.build import build_dataset, build_train_loader, seed_worker  # noqa: E402
from datasets.frame_sampling import restricted_random_indices  # noqa: E402
from datasets.synthetic import SyntheticConfig, generate_dataset  # noqa: E402


class NaivePILClips(Dataset):
    """Per-frame PIL decoding and per-frame torchvision transforms (the usual ReID video loader)."""

    def __init__(self, tracklets, seq_len: int, size):
        import torchvision.transforms as TV
        self.tracklets, self.seq_len = tracklets, seq_len
        self.transform = TV.Compose([
            TV.Resize(tuple(size), interpolation=TV.InterpolationMode.BICUBIC),
            TV.RandomHorizontalFlip(p=0.5),
            TV.RandomApply([TV.ColorJitter(hue=0.3)], p=0.5),
            TV.ToTensor(),
            TV.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            TV.RandomErasing(p=0.5, value=0),
        ])

    def __len__(self):
        return len(self.tracklets)

    def __getitem__(self, key):
        index, sample_seed = key
        tracklet = self.tracklets[index]
        rng = np.random.default_rng(sample_seed)
        frames = [self.transform(Image.open(tracklet.frames[i]).convert("RGB"))
                  for i in restricted_random_indices(tracklet.num_frames, self.seq_len, rng)]
        return {"frames": torch.stack(frames), "labels": tracklet.label}


def clips_per_second(loader, batches: int, warmup: int = 2) -> float:
    loader.batch_sampler.set_epoch(0)
    seen, start, epoch = 0, None, 0
    while True:
        for step, batch in enumerate(loader):
            if step == warmup and start is None and epoch == 0:
                start, seen = time.perf_counter(), 0
            seen += batch["frames"].shape[0]
            if start is not None and seen >= batches * batch["frames"].shape[0]:
                return seen / (time.perf_counter() - start)
        epoch += 1
        loader.batch_sampler.set_epoch(epoch)   # small datasets: keep going over more epochs
        if start is None:
            start, seen = time.perf_counter(), 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="", help="dataset root; default: generate the demo synthetic set in a temp folder")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (both pipelines)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per pipeline (after 2 warm-up batches)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 128], help="frame size H W")
    parser.add_argument("--seq-len", type=int, default=8, help="frames per clip")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch (P x K, K = 4)")
    args = parser.parse_args(argv)

    tmp = None
    root = args.root
    if not root:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loader_")
        root = os.path.join(tmp.name, "synthetic_xfd")
        start = time.perf_counter()
        generate_dataset(root, SyntheticConfig())
        print(f"generated the demo synthetic dataset in {time.perf_counter() - start:.1f} s")
    cfg = load_config(None, [
        "DATASETS.ROOT_DIR", root, "DATALOADER.NUM_WORKERS", str(args.workers), "DATALOADER.SEQ_LEN", str(args.seq_len),
        "SOLVER.IMS_PER_BATCH", str(args.batch_size), "INPUT.SIZE_TRAIN", f"[{args.size[0]}, {args.size[1]}]",
        "DATALOADER.PIN_MEMORY", "False",
    ])
    dataset = build_dataset(cfg)
    ours = build_train_loader(cfg, dataset)
    naive = DataLoader(NaivePILClips(dataset.train, args.seq_len, args.size), batch_sampler=ours.batch_sampler,
                       num_workers=args.workers, worker_init_fn=seed_worker, persistent_workers=args.workers > 0)
    torch.set_num_threads(1)
    rates = {}
    for name, loader in (("ours (OpenCV, clip-level)", ours), ("naive (PIL, per frame)", naive)):
        rates[name] = clips_per_second(loader, args.batches)
    print(f"train loader, {args.batch_size} clips x {args.seq_len} frames at {args.size[0]}x{args.size[1]}, "
          f"{args.workers} workers, {args.batches} batches each:")
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:8.1f} clips/s")
    values = list(rates.values())
    print(f"  ratio ours / naive          {values[0] / values[1]:8.2f}x")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
