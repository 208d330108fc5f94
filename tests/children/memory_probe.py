"""Peak resident memory of the chunked evaluation, run in a fresh process by test_memory_faults.py.

    python -m tests.children.memory_probe Q G D CHUNK   # prints one JSON line

It measures the chunked path (ChunkedDistance), then, as a check of the instrument, the usual path
that builds the whole (Q, G) matrix with compute_distance first.

Linux only: the resident-set high-water mark (VmHWM) is reset through /proc/self/clear_refs just
before the evaluation, so the peak counts only what the evaluation itself allocated (torch's CPU
allocations are invisible to tracemalloc).
"""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import torch

from utils.metrics import ChunkedDistance, compute_distance, evaluate_ranking, rank_gallery


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _evaluate(qf, gf, q_pids, g_pids, q_names, g_names, chunk, whole=False):
    # whole=True: the usual path (the full matrix first), to show that the probe sees such a matrix.
    distances = compute_distance(qf, gf, chunk=chunk) if whole else ChunkedDistance(qf, gf, metric="cosine")
    metrics = evaluate_ranking(distances, q_pids, g_pids, q_names=q_names, g_names=g_names, chunk=chunk)
    top = rank_gallery(distances, chunk=chunk, topk=20)
    return metrics, top


def main(num_query: int, num_gallery: int, dim: int, chunk: int) -> None:
    generator = torch.Generator().manual_seed(0)
    q_pids = np.arange(num_query) % 100
    g_pids = np.arange(num_gallery) % 100
    centres = torch.randn(100, dim, generator=generator)
    qf = centres[q_pids] + 0.5 * torch.randn(num_query, dim, generator=generator)
    gf = centres[g_pids] + 0.5 * torch.randn(num_gallery, dim, generator=generator)
    q_names = [f"{p}_{i}" for i, p in enumerate(q_pids)]
    g_names = [f"{p}_{num_query + i}" for i, p in enumerate(g_pids)]
    # Warm-up on a slice: thread pools and allocator arenas are not part of the evaluation's cost.
    _evaluate(qf[:chunk], gf[:1000], q_pids[:chunk], g_pids[:1000], q_names[:chunk], g_names[:1000], chunk)

    report = {"full_matrix_bytes": num_query * num_gallery * 4}
    for whole in (False, True):
        baseline = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident size
        except OSError as exc:  # kernels before 4.0, or a sandbox that forbids it: nothing to measure with
            print(json.dumps({"unsupported": f"cannot reset the peak resident size: {exc}"}))
            return
        metrics, top = _evaluate(qf, gf, q_pids, g_pids, q_names, g_names, chunk, whole)
        peak = _status_kib("VmHWM")
        prefix = "whole_" if whole else ""
        report.update({prefix + "peak_extra_bytes": (peak - baseline) * 1024, prefix + "mAP": metrics["mAP"],
                       prefix + "num_valid": metrics["num_valid"], prefix + "top_shape": list(top.shape)})
        del metrics, top
    print(json.dumps(report))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:5]))
