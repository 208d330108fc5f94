"""utils/reranking.py against a plain loop implementation of the same definition (small case)."""
import numpy as np
import pytest
import torch

import utils.reranking as reranking
from utils.reranking import k_reciprocal_rerank


def reference_rerank(qf, gf, k1, k2, lam):
    """Loops over items, dense matrices, float64: the definition in utils/reranking.py, verbatim."""
    feats = np.concatenate([qf, gf]).astype(np.float64)
    n, num_q = len(feats), len(qf)
    d = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    o = d / d.max(axis=1, keepdims=True)
    rank = np.argsort(o, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in rank[i, :k + 1] if i in rank[j, :k + 1]]

    v = np.zeros((n, n))
    half = int(np.around(k1 / 2))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                expanded |= set(rc)
        idx = sorted(expanded)
        w = np.exp(-o[i, idx])
        v[i, idx] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    final = np.zeros((num_q, n - num_q))
    for i in range(num_q):
        for j in range(num_q, n):
            s = sum(min(v[i, l], v[j, l]) for l in range(n))
            final[i, j - num_q] = (1 - s / (2 - s)) * (1 - lam) + o[i, j] * lam
    return final


@pytest.mark.parametrize("k1,k2,lam,chunk", [(6, 3, 0.3, 1024), (5, 1, 0.0, 7), (4, 2, 1.0, 5), (20, 6, 0.3, 16)])
def test_rerank_matches_reference(k1, k2, lam, chunk, monkeypatch):
    monkeypatch.setattr(reranking, "_PAIR_BUDGET", 50)   # exercise the pieced Jaccard join
    gen = torch.Generator().manual_seed(k1 * 10 + k2)
    # Clustered features so that reciprocal sets are non-trivial.
    centres = torch.randn(5, 8, generator=gen)
    qf = centres[torch.arange(9) % 5] + 0.4 * torch.randn(9, 8, generator=gen)
    gf = centres[torch.arange(27) % 5] + 0.4 * torch.randn(27, 8, generator=gen)
    got = k_reciprocal_rerank(qf, gf, k1=k1, k2=k2, lambda_value=lam, chunk=chunk)
    expected = reference_rerank(qf.numpy(), gf.numpy(), k1, k2, lam)
    assert got.shape == (9, 27) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)


def test_rerank_rejects_bad_parameters():
    qf, gf = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="RERANK_K1"):
        k_reciprocal_rerank(qf, gf, k1=0)
    with pytest.raises(ValueError, match="RERANK_LAMBDA"):
        k_reciprocal_rerank(qf, gf, lambda_value=1.5)
