"""Retrieval metrics for ReID: distances, mAP, CMC (R1/R5/R10/R20) and mINP.

Everything here is vectorised with torch and runs on the device of the distance matrix (CPU or
GPU), one chunk of queries at a time so that memory stays bounded for 10k x 100k problems.

Ranking convention: gallery entries are ordered by ascending distance; equal distances keep the
gallery order (a *stable* sort), so results never depend on the sorting algorithm.

Two junk rules (what is removed from a query's ranking before scoring):
  * ``"camera"`` (Market-1501): good = same pid and different camera; junk = same pid and same
    camera.
  * ``"tracklet"`` (the VReID-XFD challenge scorer, ``utils.protocol``): pid and tracklet id are
    read as integers from the ``"{pid}_{tid}"`` names (``7_3`` and ``0007_03`` are the same);
    junk = same pid and same tid; good = same pid and another tid. An entry of another identity
    is never junk, even when it shares the query's tid.

Two AP definitions, with a query's good entries at 0-based ranks r_0 < r_1 < ... among the
non-junk entries, n_good of them:
  * ``"standard"``: AP = mean over hits i of precision (i + 1) / (r_i + 1).
  * ``"trapezoid"`` (the challenge scorer): AP = sum_i ((i / r_i if r_i > 0 else 1)
    + (i + 1) / (r_i + 1)) / 2 / n_good.
CMC@k is 1 when the first good entry is within the top k non-junk entries; INP = n_good /
(r_last + 1). Queries without a good entry are excluded from the means and counted.

How the fast path avoids a full sort of every row (the expensive part of the usual evaluator):
only the *positions* of each query's good and junk entries are needed, and those are few.
Each row's distances are bucketed with a monotone map (value -> bin); the number of entries in
lower bins comes from a per-row histogram, and only the entries sharing a bin with a good or
junk entry are sorted exactly by (distance, gallery index). This is exact, ties included.
"""
from __future__ import annotations

import logging
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.protocol import AP_MODES, JUNK_RULES, good_and_junk, split_tracklet_name

logger = logging.getLogger(__name__)

# Gallery entries per distance bin on average in the fast position search (fewer bins = smaller
# histograms, more entries to sort exactly; 4 measured fastest on CPU).
_ENTRIES_PER_BIN = 4

DISTANCE_METRICS = ("cosine", "euclidean")


# ----------------------------------------------------------------------------- features
class NonFiniteFeaturesError(ValueError):
    """A model produced NaN/Inf features; the message names the model (checkpoint) and the tracklets."""


def check_finite_features(features: torch.Tensor, source: str, names: Sequence[str] | None = None) -> None:
    """Raise NonFiniteFeaturesError when any row of ``features`` (N, D) holds NaN or Inf.

    Called where features are produced for evaluation, before any distance or metric: NaN features
    would otherwise surface as NaN distances deep inside the ranking code. ``source`` names the
    model (e.g. the checkpoint path); ``names`` (N,) the tracklets, for the message.
    """
    bad = ~torch.isfinite(features).reshape(features.shape[0], -1).all(dim=1)
    count = int(bad.sum())
    if count == 0:
        return
    first = int(torch.nonzero(bad)[0, 0])
    example = f" (first: {names[first]!r})" if names is not None else f" (first: row {first})"
    raise NonFiniteFeaturesError(
        f"{source} produces non-finite features (NaN or Inf) for {count} of {features.shape[0]} tracklets{example}; "
        f"no metric was computed. Its weights are damaged or training diverged: use another checkpoint.")


# ----------------------------------------------------------------------------- distances
def _check_distance_inputs(qf: torch.Tensor, gf: torch.Tensor, metric: str) -> None:
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"Unknown distance metric {metric!r} (TEST.DISTANCE); use one of {DISTANCE_METRICS}")
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"compute_distance needs (Q, D) and (G, D) features, got {tuple(qf.shape)} and {tuple(gf.shape)}")


def _prepare_gallery(gf: torch.Tensor, metric: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(G, D) gallery -> (float32 features, L2-normalised for cosine; (G,) squared norms for euclidean)."""
    gf = gf.to(device=device, dtype=torch.float32)
    if metric == "cosine":
        return F.normalize(gf, dim=1), None
    return gf, gf.pow(2).sum(dim=1)


def _distance_block(q: torch.Tensor, gf: torch.Tensor, g_sq: torch.Tensor | None, metric: str) -> torch.Tensor:
    """(c, D) queries against a prepared gallery -> (c, G) float32 distances."""
    q = q.to(torch.float32)
    if metric == "cosine":
        return 1.0 - F.normalize(q, dim=1) @ gf.T
    sq = q.pow(2).sum(dim=1, keepdim=True) + g_sq[None, :] - 2.0 * (q @ gf.T)
    return sq.clamp_(min=0.0).sqrt_()


def compute_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "cosine",
                     chunk: int = 512) -> torch.Tensor:
    """Query-gallery distance matrix.

    qf (Q, D), gf (G, D) torch tensors on the same device -> (Q, G) float32 on that device.
    ``"cosine"``: 1 - cos(q, g) in [0, 2] (features are L2-normalised here).
    ``"euclidean"``: ||q - g||_2 (not squared), computed as sqrt(|q|^2 + |g|^2 - 2 q.g) clamped at 0.
    Queries are processed ``chunk`` at a time so that only one (chunk, G) block of temporaries
    exists besides the output. When the (Q, G) output itself is too large, use ChunkedDistance.
    """
    _check_distance_inputs(qf, gf, metric)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (TEST.QUERY_CHUNK), got {chunk}")
    gf, g_sq = _prepare_gallery(gf, metric, qf.device)
    out = torch.empty((qf.shape[0], gf.shape[0]), dtype=torch.float32, device=qf.device)
    for start in range(0, qf.shape[0], chunk):
        out[start:start + chunk] = _distance_block(qf[start:start + chunk], gf, g_sq, metric)
    return out


class ChunkedDistance:
    """A (Q, G) distance matrix that is never held whole: ``self[start:stop]`` computes those query
    rows, (stop - start, G) float32, on demand (same values as ``compute_distance``).

    For galleries whose full matrix does not fit in memory: ``evaluate_ranking``, ``rank_gallery``
    and ``iter_rankings`` accept it in place of a tensor and read it ``chunk`` rows at a time, so
    their peak memory is a few (chunk, G) blocks. Each read recomputes its block.
    qf (Q, D), gf (G, D) torch tensors; blocks live on qf's device.
    """

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, metric: str = "cosine"):
        _check_distance_inputs(qf, gf, metric)
        self.metric = metric
        self.qf = qf
        self.device = qf.device
        self.gf, self.g_sq = _prepare_gallery(gf, metric, qf.device)
        self.shape = (qf.shape[0], gf.shape[0])
        self.ndim = 2

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("ChunkedDistance is read in blocks of consecutive query rows: use distances[start:stop]")
        return _distance_block(self.qf[rows], self.gf, self.g_sq, self.metric)


def _as_distance_tensor(distmat) -> torch.Tensor:
    """(Q, G) numpy array or tensor -> tensor (no copy when possible), float32 or float64 kept;
    a ChunkedDistance is passed through (its blocks are tensors)."""
    if isinstance(distmat, ChunkedDistance):
        return distmat
    if isinstance(distmat, np.ndarray):
        distmat = torch.from_numpy(distmat)
    if not isinstance(distmat, torch.Tensor) or distmat.ndim != 2:
        raise ValueError(f"distmat must be a 2-D (Q, G) array or tensor, got {type(distmat).__name__} "
                         f"with shape {getattr(distmat, 'shape', None)}")
    if not distmat.is_floating_point():
        distmat = distmat.to(torch.float64)
    return distmat


# ----------------------------------------------------------------------------- ranking
def iter_rankings(distmat, chunk: int = 512, topk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first_query_index, order) per chunk; order (c, G or topk) int64 gallery indices,
    best first, ties broken by gallery index (stable sort); on the device of ``distmat``."""
    dist = _as_distance_tensor(distmat)
    for start in range(0, dist.shape[0], chunk):
        order = torch.argsort(dist[start:start + chunk], dim=1, stable=True)
        yield start, (order if topk is None else order[:, :topk])


def rank_gallery(distmat, chunk: int = 512, topk: int | None = None) -> np.ndarray:
    """(Q, G) distances (tensor, array or ChunkedDistance) -> (Q, G) (or (Q, topk)) numpy int gallery
    indices, best first, ties by index. int32 when the gallery fits (halves the memory of a 10k x 100k
    ranking), else int64."""
    dist = _as_distance_tensor(distmat)
    width = dist.shape[1] if topk is None else min(topk, dist.shape[1])
    dtype = np.int32 if dist.shape[1] < 2**31 else np.int64
    ranking = np.empty((dist.shape[0], width), dtype=dtype)
    for start, order in iter_rankings(dist, chunk, topk):
        ranking[start:start + order.shape[0]] = order.cpu().numpy()
    return ranking


# ----------------------------------------------------------------------------- label handling
def _tracklet_rule_codes(q_names, g_names, q_pid_codes: np.ndarray, g_pid_codes: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """The "tracklet" rule's labels, read from the names as the challenge scorer reads them.

    q_names (Q,), g_names (G,) ``"{pid}_{tid}"`` names; q_pid_codes (Q,), g_pid_codes (G,) the
    codes of the pids the caller passed (from the PID folders), only to warn when the names say
    otherwise. -> (q pid codes, g pid codes, number of pid codes, q tid codes, g tid codes), int64.
    """
    pairs = [split_tracklet_name(n) for n in q_names] + [split_tracklet_name(n) for n in g_names]
    pid_code: dict[int, int] = {}
    tid_code: dict[int, int] = {}
    # Python ints as dict keys: a tid of any length is fine (no int64 overflow).
    pids = np.fromiter((pid_code.setdefault(p, len(pid_code)) for p, _ in pairs), np.int64, len(pairs))
    tids = np.fromiter((tid_code.setdefault(t, len(tid_code)) for _, t in pairs), np.int64, len(pairs))
    given = np.concatenate([q_pid_codes, g_pid_codes])
    # The caller's pids and the names' pids must group the tracklets alike, else the names win.
    num_pairs = len(np.unique(given * len(pid_code) + pids)) if len(pairs) else 0
    if num_pairs != len(pid_code) or num_pairs != len(np.unique(given)):
        logger.warning("The pids passed for evaluation group the tracklets differently from the pids in their "
                       "'{pid}_{tid}' names; the 'tracklet' junk rule reads identities from the names, as the "
                       "challenge scorer does (check the PID folders against the tracklet names)")
    num_q = len(q_names)
    return pids[:num_q], pids[num_q:], len(pid_code), tids[:num_q], tids[num_q:]


def _to_numpy(values) -> np.ndarray:
    """Labels given as a list, NumPy array or (CPU or GPU) tensor -> NumPy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _encode_jointly(query_values, gallery_values) -> tuple[np.ndarray, np.ndarray, int]:
    """Map labels of any hashable kind (ints, strings) to shared int64 codes 0..K-1."""
    q = _to_numpy(query_values)
    g = _to_numpy(gallery_values)
    if q.dtype.kind in "iub" and g.dtype.kind in "iub":
        uniques, inverse = np.unique(np.concatenate([q.astype(np.int64), g.astype(np.int64)]), return_inverse=True)
    else:
        uniques, inverse = np.unique(np.concatenate([q.astype(str), g.astype(str)]), return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse[:len(q)], inverse[len(q):], len(uniques)


class _GroupIndex:
    """Gallery entries grouped by an integer code (CSR layout), to list a query's matches without
    scanning the gallery. codes (G,) int64 in 0..K-1."""

    def __init__(self, codes: torch.Tensor, num_codes: int):
        self.members = torch.argsort(codes, stable=True)          # (G,) gallery indices grouped by code
        self.counts = torch.bincount(codes, minlength=num_codes)  # (K,)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # (K,)

    def pairs(self, query_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query_codes (c,) -> (rows (P,), gallery indices (P,)) of every gallery entry sharing the code."""
        n = self.counts[query_codes]
        rows = torch.repeat_interleave(torch.arange(len(query_codes), device=n.device), n)
        first = torch.cumsum(n, 0) - n
        offset = torch.arange(rows.numel(), device=n.device) - first[rows]
        return rows, self.members[self.starts[query_codes][rows] + offset]


def _segment_first_index(sorted_keys: torch.Tensor) -> torch.Tensor:
    """For a sorted 1-D key tensor, the index of the first element with the same key, per element."""
    return torch.searchsorted(sorted_keys, sorted_keys, right=False)


# ----------------------------------------------------------------------------- positions
def _bin_index_dtype(device: torch.device, num_ids: int) -> torch.dtype:
    """int32 bin ids halve the memory traffic on CPU; elsewhere int64, the type every kernel takes."""
    return torch.int32 if device.type == "cpu" and num_ids < 2**31 else torch.int64


def _positions_in_ranking(dist: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                          low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """0-based position of gallery entry cols[k] in the stable ascending ranking of row rows[k].

    dist (c, G) finite; rows, cols (P,) int64; low, high (c, 1) row minima / maxima -> (P,) int64.
    Exact, ties by gallery index. Cost: a few elementwise passes over dist plus a sort of the few
    entries that share a distance bin with a requested entry (see the module docstring).
    """
    c, G = dist.shape
    device = dist.device
    num_bins = max(G // _ENTRIES_PER_BIN, 1)
    index_dtype = _bin_index_dtype(device, c * num_bins)
    # A monotone map distance -> bin: x * scale - low * scale, truncated and clamped, never puts a
    # larger distance in a lower bin, so an entry in a lower bin is always ranked earlier. A zero
    # or subnormal span gives an infinite scale: the whole row goes to bin 0 (the in-bin sort decides).
    # The clamp comes before the integer conversion because out-of-range float -> int is undefined.
    scale = num_bins / (high - low)
    usable = torch.isfinite(scale) & torch.isfinite(scale * torch.maximum(low.abs(), high.abs()))
    scale = torch.where(usable, scale, torch.zeros_like(scale))
    row_first_bin = torch.arange(c, device=device, dtype=index_dtype)[:, None] * num_bins
    flat_bins = (torch.addcmul(-low * scale, dist, scale).clamp_(0, num_bins - 1).to(index_dtype)
                 .add_(row_first_bin).view(-1))                                          # (c * G,) row-unique bin ids
    histogram = torch.bincount(flat_bins, minlength=c * num_bins)                         # (c * B,)
    # Entries in lower bins of the same row: the running count over all rows minus the rows before.
    entries_below = torch.cumsum(histogram, 0) - histogram
    row_offset = torch.arange(c, device=device, dtype=torch.int64) * G                    # (c,)

    wanted_bins = flat_bins.view(c, G)[rows, cols]                                          # (P,)
    is_wanted_bin = torch.zeros(c * num_bins, dtype=torch.bool, device=device)
    is_wanted_bin[wanted_bins] = True
    member_rows, member_cols = torch.nonzero(is_wanted_bin[flat_bins].view(c, G), as_tuple=True)  # row-major

    # Sort the members by (row, distance, gallery index): nonzero already orders by (row, index),
    # so two stable sorts (by distance, then by row) give the lexicographic order.
    member_dist = dist[member_rows, member_cols]
    order = torch.argsort(member_dist, stable=True)
    order = order[torch.argsort(member_rows[order], stable=True)]
    member_bins_sorted = flat_bins.view(c, G)[member_rows[order], member_cols[order]].to(torch.int64)  # ascending
    rank_in_bin = torch.arange(order.numel(), device=device) - _segment_first_index(member_bins_sorted)
    positions_sorted = entries_below[member_bins_sorted] - row_offset[member_rows[order]] + rank_in_bin
    member_positions = torch.empty_like(positions_sorted)
    member_positions[order] = positions_sorted

    # Look the requested entries up among the members (keys row * G + col, sorted by nonzero).
    member_keys = member_rows * G + member_cols
    found = torch.searchsorted(member_keys, rows * G + cols)
    return member_positions[found]


# ----------------------------------------------------------------------------- evaluation
def _check_rules(junk_rule: str, ap_mode: str) -> None:
    if junk_rule not in JUNK_RULES:
        raise ValueError(f"Unknown junk rule {junk_rule!r} (TEST.JUNK_RULE); use one of {JUNK_RULES}")
    if ap_mode not in AP_MODES:
        raise ValueError(f"Unknown AP mode {ap_mode!r} (TEST.AP_MODE); use one of {AP_MODES}")


def evaluate_ranking(distmat, q_pids, g_pids, q_camids=None, g_camids=None, q_names=None, g_names=None,
                     junk_rule: str = "tracklet", ap_mode: str = "trapezoid",
                     ranks: Sequence[int] = (1, 5, 10, 20), chunk: int = 512) -> dict:
    """Exact mAP / CMC / mINP of a distance matrix.

    distmat (Q, G) tensor (any device), numpy array or ChunkedDistance (the matrix is read ``chunk``
    query rows at a time, so a ChunkedDistance never exists whole); q_pids (Q,), g_pids (G,) labels of any
    hashable kind; q_camids (Q,), g_camids (G,) ints (needed by the "camera" rule); q_names (Q,),
    g_names (G,) tracklet folder names "{pid}_{tid}" (needed by the "tracklet" rule, which reads pid and
    tid from the names as the challenge scorer does; the pids passed are then only compared with them).

    Returns {"mAP", "mINP", "R1", "R5", ... (fractions 0..1, nan when no query is valid),
    "num_queries", "num_valid", "num_without_match", "junk_rule", "ap_mode",
    "AP": (Q,) float64 (nan for queries without a true match), "R1_hit": (Q,) bool,
    "first_hit_rank": (Q,) int64 0-based rank among non-junk entries (-1 when no true match)}.
    Memory: about 20 bytes x chunk x G on the device besides distmat (measured on CPU).
    """
    _check_rules(junk_rule, ap_mode)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (TEST.QUERY_CHUNK), got {chunk}")
    ranks = tuple(int(k) for k in ranks)
    if any(k < 1 for k in ranks):
        raise ValueError(f"CMC ranks must be >= 1, got {ranks}")
    dist = _as_distance_tensor(distmat)
    num_q, num_g = dist.shape
    device = dist.device
    if len(q_pids) != num_q or len(g_pids) != num_g:
        raise ValueError(f"distmat is {num_q} x {num_g} but got {len(q_pids)} query and {len(g_pids)} gallery pids")

    q_pid_codes, g_pid_codes, num_pid_codes = _encode_jointly(q_pids, g_pids)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
    if junk_rule == "camera":
        if q_camids is None or g_camids is None or len(q_camids) != num_q or len(g_camids) != num_g:
            raise ValueError("The 'camera' junk rule needs q_camids (Q,) and g_camids (G,)")
        q_side, g_side = as_tensor(_to_numpy(q_camids)), as_tensor(_to_numpy(g_camids))  # camera ids
    else:
        if q_names is None or g_names is None or len(q_names) != num_q or len(g_names) != num_g:
            raise ValueError("The 'tracklet' junk rule needs q_names (Q,) and g_names (G,) tracklet folder names")
        q_pid_codes, g_pid_codes, num_pid_codes, q_tid_codes, g_tid_codes = _tracklet_rule_codes(
            q_names, g_names, q_pid_codes, g_pid_codes)
        q_side, g_side = as_tensor(q_tid_codes), as_tensor(g_tid_codes)                  # tracklet ids
    q_pid_t, g_pid_t = as_tensor(q_pid_codes), as_tensor(g_pid_codes)
    by_pid = _GroupIndex(g_pid_t, num_pid_codes)

    ap = np.full(num_q, np.nan, dtype=np.float64)
    inp = np.full(num_q, np.nan, dtype=np.float64)
    first_rank = np.full(num_q, -1, dtype=np.int64)
    for start in range(0, num_q, chunk):
        stop = min(start + chunk, num_q)
        block = dist[start:stop]
        low = block.min(dim=1, keepdim=True).values      # NaN propagates into min / max
        high = block.max(dim=1, keepdim=True).values
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError(f"distmat rows {start}..{stop - 1} hold NaN or infinite distances; "
                             f"check the features (NaN after training?) before evaluating")
        c = stop - start
        qp = q_pid_t[start:stop]
        # Every gallery entry that is good or junk for a query of this chunk, as (row, col) pairs:
        # both rules only ever drop entries of the query's own pid (same camera / same tracklet id).
        rows, cols = by_pid.pairs(qp)
        _, is_junk = good_and_junk(qp[rows], q_side[start:stop][rows], g_pid_t[cols], g_side[cols])
        if rows.numel() == 0:
            continue
        positions = _positions_in_ranking(block, rows, cols, low, high)

        # Walk each row's listed entries in ranking order.
        order = torch.argsort(rows * num_g + positions)
        rows, positions, is_junk = rows[order], positions[order], is_junk[order]
        row_first = _segment_first_index(rows)
        junk_int = is_junk.to(torch.int64)
        junk_before = torch.cumsum(junk_int, 0) - junk_int
        junk_before = junk_before - junk_before[row_first]
        good = ~is_junk
        good_int = good.to(torch.int64)
        hits_before = torch.cumsum(good_int, 0) - good_int
        hits_before = hits_before - hits_before[row_first]

        hit_rows = rows[good]
        rank = (positions - junk_before)[good].to(torch.float64)   # 0-based rank among non-junk entries
        hit_index = hits_before[good].to(torch.float64)            # i: hits ranked before this one
        precision = (hit_index + 1.0) / (rank + 1.0)
        if ap_mode == "standard":
            contribution = precision
        else:
            left = torch.where(rank > 0, hit_index / rank.clamp_min(1.0), torch.ones_like(rank))
            contribution = (left + precision) / 2.0
        num_good = torch.bincount(hit_rows, minlength=c)
        ap_sum = torch.zeros(c, dtype=torch.float64, device=device).index_add_(0, hit_rows, contribution)
        rank_int = (positions - junk_before)[good]
        first = torch.full((c,), num_g, dtype=torch.int64, device=device).scatter_reduce_(
            0, hit_rows, rank_int, reduce="amin")
        last = torch.full((c,), -1, dtype=torch.int64, device=device).scatter_reduce_(
            0, hit_rows, rank_int, reduce="amax")
        valid = (num_good > 0).cpu().numpy()
        num_good_f = num_good.to(torch.float64)
        ap[start:stop][valid] = (ap_sum / num_good_f.clamp_min(1.0)).cpu().numpy()[valid]
        inp[start:stop][valid] = (num_good_f / (last + 1).to(torch.float64)).cpu().numpy()[valid]
        first_rank[start:stop][valid] = first.cpu().numpy()[valid]

    valid = ~np.isnan(ap)
    num_valid = int(valid.sum())
    if num_valid < num_q:
        logger.info("%d of %d queries have no true match in the gallery (junk rule %r) and are left out "
                    "of the means", num_q - num_valid, num_q, junk_rule)
    result = {
        "mAP": float(ap[valid].mean()) if num_valid else float("nan"),
        "mINP": float(inp[valid].mean()) if num_valid else float("nan"),
    }
    for k in ranks:
        result[f"R{k}"] = float((first_rank[valid] < k).mean()) if num_valid else float("nan")
    result.update(num_queries=num_q, num_valid=num_valid, num_without_match=num_q - num_valid,
                  junk_rule=junk_rule, ap_mode=ap_mode, AP=ap, R1_hit=valid & (first_rank == 0),
                  first_hit_rank=first_rank)
    return result


def pool_cases(per_case: Mapping[int, Mapping]) -> dict:
    """mAP-3 and the means over cases of per-query results: the one place either is computed
    (evaluation's summary, the submission scorer, the clothes-changing protocol).

    per_case: {case: {"AP": (Q,) float, a query's AP, nan for a query without a true match (left out of
    every figure); "R1_hit": (Q,) bool, its first non-junk entry is a true match}}; the output of
    :func:`evaluate_ranking` has both.
    -> fractions {"mAP-3": mean AP over the valid queries of all cases pooled (the leaderboard's figure:
    a case weighs by its valid queries), "R1-3": R1 pooled the same way, "mAP_mean_over_cases" /
    "R1_mean_over_cases": plain means of the per-case mAP / R1 over the cases with a valid query,
    "num_valid": the pooled valid queries, "cases": those cases, sorted}; nan figures when none is valid.
    """
    aps, hits, cases = [], [], []
    for case, result in sorted(per_case.items()):
        ap = np.asarray(result["AP"], dtype=np.float64).reshape(-1)
        hit = np.asarray(result["R1_hit"], dtype=bool).reshape(-1)
        if ap.shape != hit.shape:
            raise ValueError(f"case {case}: {ap.size} AP values but {hit.size} R1 hits; give one of each per query")
        valid = ~np.isnan(ap)
        if valid.any():
            aps.append(ap[valid])
            hits.append(hit[valid])
            cases.append(case)
    nan = float("nan")
    pooled_ap = np.concatenate(aps) if aps else np.zeros(0)
    pooled_hit = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    return {
        "mAP-3": float(pooled_ap.mean()) if pooled_ap.size else nan,
        "R1-3": float(pooled_hit.mean()) if pooled_hit.size else nan,
        "mAP_mean_over_cases": float(np.mean([a.mean() for a in aps])) if aps else nan,
        "R1_mean_over_cases": float(np.mean([h.mean() for h in hits])) if hits else nan,
        "num_valid": int(pooled_ap.size),
        "cases": cases,
    }
