"""A gallery too large for one (Q, G) distance matrix: chunked evaluation with bounded memory.

Row: utils.metrics.ChunkedDistance computes the distances ``chunk`` query rows at a time;
evaluate_ranking and rank_gallery read it block by block, so the full matrix never exists.
The peak is measured in a fresh process (tests/children/memory_probe.py) and must stay far below
the size of the full matrix; the results must equal those of the full matrix.
"""
import json
import sys

import numpy as np
import pytest
import torch

from tests.helpers.cli import run_cli
from utils.metrics import ChunkedDistance, compute_distance, evaluate_ranking, rank_gallery


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunked_distances_give_the_full_matrix_results(metric):
    generator = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(37, 16, generator=generator), torch.randn(101, 16, generator=generator)
    q_pids, g_pids = np.arange(37) % 7, np.arange(101) % 7
    q_names = [f"{p}_{i}" for i, p in enumerate(q_pids)]
    g_names = [f"{p}_{i % 50}" for i, p in enumerate(g_pids)]  # some share a query's tracklet id: junk
    full = compute_distance(qf, gf, metric=metric)
    lazy = ChunkedDistance(qf, gf, metric=metric)
    assert lazy.shape == (37, 101)
    torch.testing.assert_close(lazy[5:17], full[5:17])
    np.testing.assert_array_equal(rank_gallery(lazy, chunk=4), rank_gallery(full, chunk=4))
    a = evaluate_ranking(full, q_pids, g_pids, q_names=q_names, g_names=g_names, chunk=5)
    b = evaluate_ranking(lazy, q_pids, g_pids, q_names=q_names, g_names=g_names, chunk=5)
    np.testing.assert_array_equal(a["AP"], b["AP"])
    assert a["mAP"] == b["mAP"] and a["R1"] == b["R1"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_chunked_evaluation_peak_memory_is_far_below_the_full_matrix():
    # Many queries, a moderate gallery: the full matrix is large while a (chunk, G) block is small.
    num_query, num_gallery, chunk = 8192, 5000, 16
    proc = run_cli("-m", "tests.children.memory_probe", str(num_query), str(num_gallery), "32", str(chunk))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "unsupported" in report:
        pytest.skip(report["unsupported"])
    full = report["full_matrix_bytes"]
    assert full == num_query * num_gallery * 4  # 164 MB
    assert report["whole_peak_extra_bytes"] > 0.9 * full, report  # the probe does see a whole matrix ...
    assert report["peak_extra_bytes"] < full / 10, report  # ... and the chunked path never builds one
    assert report["num_valid"] == num_query and 0 < report["mAP"] <= 1
    assert report["mAP"] == pytest.approx(report["whole_mAP"], abs=1e-9)
    assert report["top_shape"] == [num_query, 20]
