"""Dataset index at DetReIDXV1 scale: scan time, index memory and cached-start time.

    python bench/scan.py [--tracklets 11288] [--frames 1040] [--pids 509]

Builds a tree of ``--tracklets`` real tracklet folders (``train/<PID>/<PID>_<tid>/``) in a temporary
folder; their frame names (``--frames`` per tracklet, 2/3 aerial names of the authors' form, 1/3
short ground names, every third tracklet with gaps in its frame numbers) are generated in memory in
place of the folder listing (12M empty files would take longer to create than to scan). Prints:

* scan time of the first start (folder walk + listing + compacting + parsing), and the time the
  in-memory listing alone takes;
* index memory (tracemalloc: what the DetReIDX object keeps) next to the old index, one path string
  per frame, measured on a sample and scaled up; targets: index <= 150 MB;
* cached-start time (second start: folder walk + scan cache); target <= 5 s.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.detreidx import scan as scanner  # noqa: E402
from datasets.detreidx.dataset import DetReIDX  # noqa: E402
from datasets.detreidx.names import CAPTURE_POINTS  # noqa: E402

SOFT = "3_2_1_0_0_0_0_5_2_1_0_1_2"


def frame_names(folder: str, frames: int) -> list[str]:
    """The listing of one tracklet folder, as a scandir would return it (unsorted)."""
    name = os.path.basename(folder)
    pid, tid = (int(x) for x in name.split("_"))
    rng = np.random.default_rng(tid)
    numbers = np.arange(1, frames + 1)
    if tid % 3 == 0:                           # gaps: frames dropped by the detector
        numbers = np.sort(rng.choice(frames * 2, size=frames, replace=False)) + 1
    if tid % 3 == 1:
        prefix = f"{pid:04d}_M_31_F_"
    else:
        h, d, a = CAPTURE_POINTS[tid % len(CAPTURE_POINTS)]
        prefix = f"{pid:04d}_23_10_2024_09_18_{h:g}_{d:g}_{a:g}_{SOFT}_{1 + tid % 2}_"
    names = [f"{prefix}{n:06d}.jpg" for n in numbers]
    order = rng.permutation(len(names))
    return [names[i] for i in order]


def make_tree(root: str, tracklets: int, pids: int) -> None:
    tid = 1
    per_pid = -(-tracklets // pids)
    for pid in range(1, pids + 1):
        for _ in range(per_pid):
            if tid > tracklets:
                break
            os.makedirs(os.path.join(root, "train", f"{pid:04d}", f"{pid:04d}_{tid}"))
            tid += 1
    stamp = time.time() - 60                   # settled folders: the scan cache may be written
    for folder, _, _ in os.walk(root):
        os.utime(folder, (stamp, stamp))


def old_index_bytes(folders: list[str], frames: int) -> int:
    """tracemalloc bytes of the old index's frame lists (a tuple of path strings per tracklet)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [tuple(os.path.join(f, n) for n in sorted(frame_names(f, frames))) for f in folders]
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    return used


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracklets", type=int, default=11288)
    parser.add_argument("--frames", type=int, default=1040)
    parser.add_argument("--pids", type=int, default=509)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    real_listing = scanner._list_frame_names
    try:
        return _run(args)
    finally:
        scanner._list_frame_names = real_listing    # the in-memory listing never outlives the benchmark


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = os.path.join(tmp, "DetReIDXV1"), os.path.join(tmp, "cache")
        make_tree(root, args.tracklets, args.pids)
        listing = [0.0, 0.0]   # wall, CPU seconds

        def list_in_memory(folder: str) -> list[str]:
            begin, begin_cpu = time.perf_counter(), time.process_time()
            names = frame_names(folder, args.frames)
            listing[0] += time.perf_counter() - begin
            listing[1] += time.process_time() - begin_cpu
            return names

        scanner._list_frame_names = list_in_memory
        folders = [os.path.join(r, d) for r, ds, _ in os.walk(os.path.join(root, "train")) for d in ds if "_" in d]

        start, cpu = time.perf_counter(), time.process_time()
        first = DetReIDX(root, scan_cache_dir=cache)
        scan, scan_cpu = time.perf_counter() - start, time.process_time() - cpu
        frames = sum(t.num_frames for t in first.train)
        assert not first.scan_summary.from_cache and os.listdir(cache), "the first start should write the scan cache"
        del first
        gc.collect()

        start, cpu = time.perf_counter(), time.process_time()
        second = DetReIDX(root, scan_cache_dir=cache)
        cached, cached_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert second.scan_summary.from_cache
        del second
        gc.collect()

        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        third = DetReIDX(root, scan_cache_dir=cache)
        index_bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert sum(t.num_frames for t in third.train) == frames

        sample = folders[:: max(1, len(folders) // 300)]
        old_bytes = old_index_bytes(sample, args.frames) * len(folders) / len(sample)
        cache_mb = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache)) / 2**20

    print(f"index of {len(folders):,} tracklets x {args.frames:,} frame names = {frames:,} frames")
    # CPU seconds next to wall seconds: on a busy machine the wall time mostly measures the others.
    print(f"first start: {scan:.1f} s wall / {scan_cpu:.1f} s CPU, of which generating the listings in memory "
          f"{listing[0]:.1f} s / {listing[1]:.1f} s; walk + compacting + parsing + cache write: "
          f"{scan - listing[0]:.1f} s / {scan_cpu - listing[1]:.1f} s")
    print(f"cached start (walk + scan cache, {cache_mb:.1f} MB file): {cached:.2f} s wall / {cached_cpu:.2f} s CPU   "
          f"target <= 5 s")
    print(f"index memory (tracemalloc): {index_bytes / 2**20:.1f} MB   target <= 150 MB; "
          f"one path string per frame (old index): {old_bytes / 2**20:,.0f} MB (from {len(sample)} tracklets) "
          f"= {old_bytes / max(index_bytes, 1):.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
