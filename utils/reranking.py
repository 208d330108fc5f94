"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), vectorised with torch and memory-bounded.

Definition (queries and gallery pooled into N = Q + G items):
  1. d(i, j) = squared Euclidean distance, O(i, j) = d(i, j) / max_j' d(i, j') (row-normalised).
  2. N(i, k) = the k + 1 nearest items of i (itself included); R(i, k) = {j in N(i, k): i in N(j, k)}.
  3. Expansion: R*(i) = R(i, k1) united with every R(c, round(k1 / 2)) of a candidate c in R(i, k1)
     that shares more than 2/3 of its items with R(i, k1) (round half to even, as NumPy's around).
  4. V(i, j) = exp(-O(i, j)) / sum over R*(i), for j in R*(i); 0 elsewhere.
  5. Local query expansion (k2 > 1): V(i) <- mean of V(j) over the k2 nearest items j of i.
  6. Jaccard distance J(i, j) = 1 - s / (2 - s), s = sum_l min(V(i, l), V(j, l)).
  7. Final distance (query i, gallery j) = (1 - lambda) J(i, j) + lambda O(i, j).

Memory: never an N x N matrix. Distances come in row chunks (top-(k1 + 1) neighbours only), V is
kept sparse (about N x |R*| entries), and the Jaccard sums join the query and gallery entries of
V column by column (the inverted-index form), in bounded pieces. Output (Q, G) float32.
Ties between equal distances in the neighbour lists follow torch.topk (unspecified order).
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

_PAIR_BUDGET = 1 << 24   # (query entry, gallery entry) pairs joined at once in the Jaccard step


def _squared_distances(rows: torch.Tensor, features: torch.Tensor, feature_sq: torch.Tensor) -> torch.Tensor:
    """rows (c, D), features (N, D), feature_sq (N,) -> (c, N) squared Euclidean distances >= 0."""
    d = rows.pow(2).sum(1, keepdim=True) + feature_sq[None, :] - 2.0 * (rows @ features.T)
    return d.clamp_(min=0.0)


def _reciprocal_mask(neighbours: torch.Tensor, lists: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """neighbours (c, K) item ids of items (c,); lists (N, K') neighbour lists of every item ->
    (c, K) bool: whether items[r] appears in the list of neighbours[r, a]."""
    return (lists[neighbours] == items[:, None, None]).any(dim=-1)


@torch.no_grad()
def k_reciprocal_rerank(qf: torch.Tensor, gf: torch.Tensor, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, device: torch.device | str | None = None,
                        chunk: int = 1024) -> torch.Tensor:
    """Re-ranked query-gallery distances.

    qf (Q, D), gf (G, D) features (L2-normalise them first if the model's distance is cosine);
    k1, k2, lambda_value: TEST.RERANK_K1 / RERANK_K2 / RERANK_LAMBDA; device: where to compute
    (default: qf's device); chunk: rows per distance block. -> (Q, G) float32 on ``device``.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"Re-ranking needs k1 >= 1 and k2 >= 1 (TEST.RERANK_K1 / RERANK_K2), got {k1}, {k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"TEST.RERANK_LAMBDA must lie in [0, 1], got {lambda_value}")
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"Re-ranking needs (Q, D) and (G, D) features, got {tuple(qf.shape)} and {tuple(gf.shape)}")
    device = torch.device(device) if device is not None else qf.device
    num_q, num_g = qf.shape[0], gf.shape[0]
    features = torch.cat([qf.to(device, torch.float32), gf.to(device, torch.float32)])
    n = features.shape[0]
    feature_sq = features.pow(2).sum(1)
    k_full = min(k1 + 1, n)
    k_half = min(int(round(k1 / 2)) + 1, n)   # Python's round is half-to-even, like NumPy's around
    k_expand = min(k2, n)

    # 1-2. Row maxima and the k1 + 1 nearest neighbours of every item, one row block at a time.
    row_max = torch.empty(n, device=device)
    neighbours = torch.empty((n, k_full), dtype=torch.int64, device=device)
    for start in range(0, n, chunk):
        d = _squared_distances(features[start:start + chunk], features, feature_sq)
        row_max[start:start + chunk] = d.max(dim=1).values
        neighbours[start:start + chunk] = torch.topk(d, k_full, dim=1, largest=False, sorted=True).indices
    row_max = torch.where(row_max > 0, row_max, torch.ones_like(row_max))   # all-identical features
    half_lists = neighbours[:, :k_half].contiguous()
    all_items = torch.arange(n, device=device)
    half_reciprocal = _reciprocal_mask(half_lists, half_lists, all_items)    # (N, k_half)

    # 3-4. Expanded k-reciprocal sets and their weights, as sparse rows of V.
    v_rows, v_cols, v_vals = [], [], []
    for start in range(0, n, chunk):
        items = all_items[start:start + chunk]
        c = items.numel()
        near = neighbours[start:start + chunk]                                # (c, K)
        reciprocal = _reciprocal_mask(near, neighbours, items)                 # (c, K) = R(i, k1)
        reciprocal_ids = torch.where(reciprocal, near, torch.full_like(near, -1))
        cand_sets = half_lists[near]                                          # (c, K, Kh)
        cand_valid = half_reciprocal[near]                                    # (c, K, Kh) = R(c, k1/2)
        shared = (cand_sets[..., None] == reciprocal_ids[:, None, None, :]).any(-1) & cand_valid
        accepted = reciprocal & (shared.sum(-1).double() > 2.0 / 3.0 * cand_valid.sum(-1).double())
        member = torch.zeros((c, n), dtype=torch.bool, device=device)
        local = torch.arange(c, device=device)
        member[local[:, None].expand_as(near)[reciprocal], near[reciprocal]] = True
        take = accepted[..., None] & cand_valid
        member[local[:, None, None].expand_as(cand_sets)[take], cand_sets[take]] = True
        d = _squared_distances(features[start:start + chunk], features, feature_sq) / row_max[start:start + chunk, None]
        weights = torch.where(member, torch.exp(-d), torch.zeros_like(d))
        weights = weights / weights.sum(dim=1, keepdim=True)
        r, col = member.nonzero(as_tuple=True)
        v_rows.append(r + start), v_cols.append(col), v_vals.append(weights[r, col])
    rows, cols, vals = torch.cat(v_rows), torch.cat(v_cols), torch.cat(v_vals)   # sorted by row

    # 5. Local query expansion: V(i) <- mean of the V rows of i's k2 nearest neighbours. Each
    # neighbour's row entries are copied under row i; coalescing sums the copies per column.
    if k2 > 1:
        row_count = torch.bincount(rows, minlength=n)
        row_start = torch.cumsum(row_count, 0) - row_count
        sources = neighbours[:, :k_expand].reshape(-1)                          # (N * k2,)
        targets = all_items.repeat_interleave(k_expand)
        copies = row_count[sources]
        which = torch.repeat_interleave(torch.arange(sources.numel(), device=device), copies)
        offset = torch.arange(which.numel(), device=device) - (torch.cumsum(copies, 0) - copies)[which]
        taken = row_start[sources[which]] + offset
        expanded = torch.sparse_coo_tensor(torch.stack([targets[which], cols[taken]]), vals[taken], (n, n),
                                           device=device, check_invariants=False).coalesce()
        rows, cols = expanded.indices()
        vals = expanded.values() / k_expand

    # 6-7. Jaccard sums through shared columns: each query entry V(i, l) meets the gallery entries
    # V(j, l) of the same column l.
    is_query = rows < num_q
    q_rows, q_cols, q_vals = rows[is_query], cols[is_query], vals[is_query]        # sorted by row
    g_rows, g_cols, g_vals = rows[~is_query] - num_q, cols[~is_query], vals[~is_query]
    by_col = torch.argsort(g_cols, stable=True)
    g_rows, g_cols, g_vals = g_rows[by_col], g_cols[by_col], g_vals[by_col]
    col_count = torch.bincount(g_cols, minlength=n)
    col_start = torch.cumsum(col_count, 0) - col_count
    pairs_per_entry = col_count[q_cols]
    pairs_before = torch.cumsum(pairs_per_entry, 0) - pairs_per_entry

    result = torch.empty((num_q, num_g), dtype=torch.float32, device=device)
    query_features = features[:num_q]
    gallery_features, gallery_sq = features[num_q:], feature_sq[num_q:]
    for start in range(0, num_q, chunk):
        stop = min(start + chunk, num_q)
        min_sum = torch.zeros((stop - start) * num_g, dtype=torch.float32, device=device)
        lo, hi = torch.searchsorted(q_rows, torch.tensor([start, stop], device=device)).tolist()
        entry = lo
        while entry < hi:
            # Take query entries until the joined pairs reach the budget (at least one entry).
            limit = pairs_before[entry] + _PAIR_BUDGET
            end = int(torch.searchsorted(pairs_before[entry:hi], limit.reshape(1), right=True)) + entry
            end = max(end, entry + 1)
            count = pairs_per_entry[entry:end]
            which = torch.repeat_interleave(torch.arange(entry, end, device=device), count)
            offset = torch.arange(which.numel(), device=device) - (pairs_before[which] - pairs_before[entry])
            partner = col_start[q_cols[which]] + offset
            overlap = torch.minimum(q_vals[which], g_vals[partner])
            min_sum.index_add_(0, (q_rows[which] - start) * num_g + g_rows[partner], overlap)
            entry = end
        min_sum = min_sum.view(stop - start, num_g)
        jaccard = 1.0 - min_sum / (2.0 - min_sum)
        original = _squared_distances(query_features[start:stop], gallery_features, gallery_sq) / row_max[start:stop, None]
        result[start:stop] = jaccard * (1.0 - lambda_value) + original * lambda_value
    logger.debug("k-reciprocal re-ranking: %d queries x %d gallery, V holds %d entries", num_q, num_g, vals.numel())
    return result
