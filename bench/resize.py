"""Frame resizing: ours (PIL-equivalent bicubic, antialiased when shrinking) vs cv2.INTER_CUBIC (the
loader's previous resize, no antialiasing), cv2.INTER_AREA and PIL itself, on one thread.

    python -m bench.resize [--rounds 5] [--frames 64]

For each source size (enlarged synthetic-sized crops, a mixed case, shrunk ground-sized crops) it
prints the time per frame of each method (best of ``--rounds`` interleaved rounds), the ratio to
cv2.INTER_CUBIC, and the mean absolute difference to PIL bicubic in grey levels.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.transforms import resize_frames  # noqa: E402

SOURCES = [(80, 40), (150, 60), (300, 100), (400, 200), (1024, 512)]


def detailed_frames(shape, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    stripes = (np.sin(xx * 1.3) + np.sin(yy * 0.9))[..., None] * 50
    return [np.clip(128 + stripes + rng.normal(0, 40, size=(*shape, 3)), 0, 255).astype(np.uint8) for _ in range(count)]


def previous_resize(frames, height: int, width: int) -> np.ndarray:
    """The resize the loader used before: cv2.INTER_CUBIC into one (T,H,W,3) array."""
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 128], help="target H W")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    height, width = args.size
    methods = {
        "ours": lambda fs: resize_frames(fs, (height, width)),
        "cv2 cubic": lambda fs: previous_resize(fs, height, width),
        "cv2 area": lambda fs: [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in fs],
        "PIL bicubic": lambda fs: [np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in fs],
    }
    print(f"resize to {height}x{width}, {args.frames} frames, best of {args.rounds} rounds, one thread")
    print(f"{'source':>10s} " + " ".join(f"{name:>18s}" for name in methods) + "   ours/cv2 cubic")
    for shape in SOURCES:
        frames = detailed_frames(shape, args.frames)
        best = {name: float("inf") for name in methods}
        for _ in range(args.rounds):  # interleaved, so a busy machine slows every method alike
            for name, fn in methods.items():
                start = time.perf_counter()
                fn(frames)
                best[name] = min(best[name], (time.perf_counter() - start) / len(frames) * 1e3)
        reference = np.stack(methods["PIL bicubic"](frames[:4])).astype(np.float64)
        diffs = {name: np.abs(np.stack(fn(frames[:4])).astype(np.float64) - reference).mean() for name, fn in methods.items()}
        cells = " ".join(f"{best[n]:7.3f}ms {diffs[n]:5.1f}gl" for n in methods)
        print(f"{shape[0]:>5d}x{shape[1]:<4d} {cells}   {best['ours'] / best['cv2 cubic']:6.2f}x")
    print("(ms per frame; gl = mean absolute difference to PIL bicubic in grey levels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
