"""Per-condition results of aerial queries: mAP and R1 by drone altitude, horizontal distance,
pitch, aerial (line-of-sight) distance, and by same vs different clothing session.

Input: the per-query ``AP`` and ``R1_hit`` arrays of ``utils.metrics.evaluate_ranking`` (AP is
nan for a query without a true match; such queries are left out) and the query / gallery
``Tracklet`` records (fields view, height, distance, angle, aerial_distance, session, pid, name).
Output: a JSON-ready dict (nan written as None), a text table, and a PNG plot.

Bins are half-open [low, high) intervals of a tracklet field; the defaults follow the DetReIDX
capture grid (heights 5.8-120 m, horizontal distances 0-120 m, pitches 30/60/90 degrees).
A query whose field is None goes to an "unknown" bin (shown only when it has queries).

Clothes (when the dataset says which outfit each tracklet shows, e.g. the synthetic generator's
``tracklet_outfits``): a query is "clothes changed" when at least one true match wears another outfit,
"same clothes" when all wear the query's (the panel shows the usual AP of each group). The pooled
figure over all cases (aerial and ground queries), :func:`clothes_changed_summary`, scores the
clothes-changed queries as CC-ReID benchmarks do: same-outfit matches are junk.

Clothing session: the "true matches" of a query are the gallery tracklets with its pid and
another tracklet name. The query is
  * "same session" when every true match with a known session has the query's session,
  * "different session" when none has,
  * "mixed" when both kinds occur,
  * "unknown" when the query's session is None or no true match has a session (ground gallery
    tracklets carry no session, so case 1 queries all land here).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Mapping, Sequence

import numpy as np

from utils.fileio import atomic_write

DEFAULT_BINS: dict[str, tuple[str, tuple[float, ...], str]] = {
    # condition name: (Tracklet field, bin edges, unit)
    "altitude": ("height", (0.0, 15.0, 30.0, 60.0, math.inf), "m"),
    "horizontal_distance": ("distance", (0.0, 5.0, 25.0, 60.0, 100.0, math.inf), "m"),
    "pitch": ("angle", (0.0, 45.0, 75.0, math.inf), "deg"),
    "aerial_distance": ("aerial_distance", (0.0, 25.0, 50.0, 100.0, math.inf), "m"),
}
SESSION_GROUPS = ("same session", "different session", "mixed", "unknown")
CLOTHES_GROUPS = ("same clothes", "clothes changed", "unknown")


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _bin_label(low: float, high: float, unit: str) -> str:
    fmt = lambda x: f"{x:g}"  # noqa: E731
    if low <= 0 and math.isinf(high):
        return "all"
    if low <= 0:
        return f"< {fmt(high)} {unit}"
    if math.isinf(high):
        return f">= {fmt(low)} {unit}"
    return f"{fmt(low)}-{fmt(high)} {unit}"


def session_groups(queries: Sequence, gallery: Sequence) -> list[str]:
    """Clothing-session group of every query (see the module docstring), one of SESSION_GROUPS."""
    sessions_by_pid: dict = {}
    for g in gallery:
        sessions_by_pid.setdefault(g.pid, []).append((g.name, g.session))
    groups = []
    for q in queries:
        known = [s for name, s in sessions_by_pid.get(q.pid, []) if name != q.name and s is not None]
        if q.session is None or not known:
            groups.append("unknown")
        elif all(s == q.session for s in known):
            groups.append("same session")
        elif all(s != q.session for s in known):
            groups.append("different session")
        else:
            groups.append("mixed")
    return groups


def clothes_groups(query_names: Sequence[str], gallery_names: Sequence[str],
                   outfits: Mapping[str, str] | None) -> list[str]:
    """Clothes group (one of CLOTHES_GROUPS) of every query, from tracklet folder names ``{pid}_{tid}``
    and ``outfits`` {tracklet name: outfit key}: "clothes changed" when at least one true match (a gallery
    tracklet of the query's pid other than the query itself) wears another outfit than the query, "same
    clothes" when every one wears the query's; "unknown" without outfit labels or true matches."""
    from utils.protocol import split_tracklet_name

    by_pid: dict[int, list[str]] = {}
    for name in gallery_names:
        by_pid.setdefault(split_tracklet_name(name)[0], []).append(name)
    groups = []
    for name in query_names:
        own = (outfits or {}).get(name)
        matches = [(outfits or {}).get(g) for g in by_pid.get(split_tracklet_name(name)[0], []) if g != name]
        if own is None or not matches or any(m is None for m in matches):
            groups.append("unknown")
        elif any(m != own for m in matches):
            groups.append("clothes changed")
        else:
            groups.append("same clothes")
    return groups


def clothes_changed_summary(results: Mapping, outfits: Mapping[str, str] | None, ap_mode: str = "trapezoid") -> dict | None:
    """The clothes-changing protocol of CC-ReID benchmarks, pooled over the scored cases: a true match
    wearing the query's outfit is junk (left out of the ranking), so a query is scored on finding its
    identity in another outfit; queries without such a match are left out. None without outfit labels.

    results: {case: CaseResult} with ``query_names``, ``gallery_names``, ``ranking`` (Q, G) gallery
    indices best first and ``metrics`` (None for a case without ground truth), as
    ``processor.evaluation.evaluate_cases``. -> {"clothes changed": {"count", "mAP", "R1"}} (percent).
    """
    if not outfits:
        return None
    from utils.metrics import evaluate_ranking, pool_cases
    from utils.protocol import split_tracklet_name

    codes: dict[str, int] = {}
    per_case = {}
    for case, result in results.items():
        if result.metrics is None or not len(result.query_names):
            continue
        queries, gallery = list(result.query_names), list(result.gallery_names)
        # Outfit keys as "camera" ids: the camera junk rule (same pid, same id = junk) is then exactly
        # "same identity in the same outfit"; an unlabelled tracklet gets an id of its own.
        def outfit_ids(names, start):
            return [codes.setdefault(outfits[n], len(codes)) if n in outfits else -(start + i + 1)
                    for i, n in enumerate(names)]
        q_ids, g_ids = outfit_ids(queries, 0), outfit_ids(gallery, len(queries))
        ranking = np.asarray(result.ranking)
        rank_of = np.empty(ranking.shape, dtype=np.float64)   # distance = rank: the case's own order
        np.put_along_axis(rank_of, ranking, np.arange(ranking.shape[1], dtype=np.float64)[None, :], axis=1)
        metrics_logger = logging.getLogger("utils.metrics")
        level = metrics_logger.level
        metrics_logger.setLevel(logging.WARNING)   # queries without a match in another outfit are expected here
        try:
            metrics = evaluate_ranking(rank_of, [split_tracklet_name(n)[0] for n in queries],
                                       [split_tracklet_name(n)[0] for n in gallery], q_ids, g_ids,
                                       junk_rule="camera", ap_mode=ap_mode)
        finally:
            metrics_logger.setLevel(level)
        labelled = np.array([n in outfits for n in queries], dtype=bool)
        per_case[case] = {"AP": np.where(labelled, metrics["AP"], np.nan), "R1_hit": metrics["R1_hit"]}
    pooled = pool_cases(per_case)   # unlabelled queries (AP nan here) are left out like those without a match
    count = pooled["num_valid"]
    return {"clothes changed": {"count": count, "mAP": 100.0 * pooled["mAP-3"] if count else None,
                                "R1": 100.0 * pooled["R1-3"] if count else None}}


def condition_report(ap, r1_hit, queries: Sequence, gallery: Sequence,
                     bins: dict[str, tuple[str, Sequence[float], str]] | None = None,
                     outfits: Mapping[str, str] | None = None) -> dict:
    """Per-condition mAP / R1 (fractions) of the aerial queries that have a true match.

    ap (Q,) float with nan for queries without a true match; r1_hit (Q,) bool; queries (Q,) and
    gallery Tracklet records; bins {condition: (field, edges, unit)} (default DEFAULT_BINS); outfits
    {tracklet name: outfit key} or None: with it a "clothes" condition (see :func:`clothes_groups`).
    -> {"num_queries", "num_aerial", "num_evaluated", "overall": {count, mAP, R1},
        "conditions": {name: {"field", "unit", "bins": [{label, low, high, count, mAP, R1}, ...]}},
        "session_definition": str}
    """
    ap = np.asarray(ap, dtype=np.float64)
    r1_hit = np.asarray(r1_hit, dtype=bool)
    if not len(ap) == len(r1_hit) == len(queries):
        raise ValueError(f"condition_report: AP ({len(ap)}), R1_hit ({len(r1_hit)}) and queries ({len(queries)}) "
                         f"must have one entry per query, in the same order")
    bins = DEFAULT_BINS if bins is None else bins
    aerial = np.array([q.view == "aerial" for q in queries], dtype=bool)
    used = aerial & ~np.isnan(ap)

    def summary(mask: np.ndarray) -> dict:
        return {"count": int(mask.sum()), "mAP": _mean_or_none(ap[mask]),
                "R1": _mean_or_none(r1_hit[mask].astype(np.float64))}

    conditions: dict = {}
    for name, (field, edges, unit) in bins.items():
        values = np.array([np.nan if getattr(q, field) is None else float(getattr(q, field)) for q in queries])
        rows = []
        for low, high in zip(edges[:-1], edges[1:]):
            in_bin = used & (values >= low) & (values < high)
            rows.append({"label": _bin_label(low, high, unit), "low": low if math.isfinite(low) else None,
                         "high": high if math.isfinite(high) else None, **summary(in_bin)})
        unknown = used & np.isnan(values)
        if unknown.any():
            rows.append({"label": "unknown", "low": None, "high": None, **summary(unknown)})
        conditions[name] = {"field": field, "unit": unit, "bins": rows}
    groups = np.array(session_groups(queries, gallery), dtype=object)
    conditions["session"] = {"field": "session", "unit": "", "bins": [
        {"label": group, "low": None, "high": None, **summary(used & (groups == group))}
        for group in SESSION_GROUPS if group != "unknown" or (used & (groups == "unknown")).any()]}
    if not any(b["count"] for b in conditions["session"]["bins"] if b["label"] != "unknown"):
        del conditions["session"]   # no session known for any query (case 1: ground gallery): nothing to show
    if outfits:
        clothes = np.array(clothes_groups([q.name for q in queries], [g.name for g in gallery], outfits), dtype=object)
        conditions["clothes"] = {"field": "clothes", "unit": "", "bins": [
            {"label": group, "low": None, "high": None, **summary(used & (clothes == group))}
            for group in CLOTHES_GROUPS if group != "unknown" or (used & (clothes == "unknown")).any()]}
    return {
        "num_queries": len(queries),
        "num_aerial": int(aerial.sum()),
        "num_evaluated": int(used.sum()),
        "overall": summary(used),
        "conditions": conditions,
        "session_definition": ("true matches = gallery tracklets with the query's pid and another name; "
                               "same/different = all known-session true matches in / outside the query's "
                               "session; mixed = both; unknown = no session known"),
    }


def format_condition_report(report: dict, title: str = "") -> str:
    """Text table of a ``condition_report`` (percentages)."""
    pct = lambda x: "    -" if x is None else f"{100 * x:6.2f}"  # noqa: E731
    head = f"Per-condition results{' - ' + title if title else ''}: {report['num_evaluated']} of " \
           f"{report['num_aerial']} aerial queries have a true match"
    lines = [head, f"{'condition':31s} {'bin':20s} {'queries':>8s} {'mAP':>7s} {'R1':>7s}"]
    overall = report["overall"]
    lines.append(f"{'all aerial':31s} {'':20s} {overall['count']:8d} {pct(overall['mAP']):>7s} {pct(overall['R1']):>7s}")
    for name, condition in report["conditions"].items():
        label = f"{name} ({condition['field']})" if condition["field"] != name else name
        for i, row in enumerate(condition["bins"]):
            lines.append(f"{label if i == 0 else '':31s} {row['label']:20s} {row['count']:8d} "
                         f"{pct(row['mAP']):>7s} {pct(row['R1']):>7s}")
    return "\n".join(lines)


def plot_condition_report(report: dict, out_dir: str, filename: str = "per_condition.png",
                          title: str = "") -> str:
    """Bar charts (mAP and R1 per bin, query counts under the bin labels) of every condition, one PNG written
    atomically into ``out_dir``. Returns the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = report["conditions"]
    fig, axes = plt.subplots(1, len(conditions), figsize=(4.2 * len(conditions), 3.8), squeeze=False)
    for ax, (name, condition) in zip(axes[0], conditions.items()):
        labels = [f"{row['label']}\nn={row['count']}" for row in condition["bins"]]
        x = np.arange(len(labels))
        for offset, key, colour in ((-0.2, "mAP", "tab:blue"), (0.2, "R1", "tab:orange")):
            heights = [100 * row[key] if row[key] is not None else 0.0 for row in condition["bins"]]
            ax.bar(x + offset, heights, width=0.4, label=key, color=colour)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_ylabel("%")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or f"Aerial queries by condition ({report['num_evaluated']} with a true match)", fontsize=11)
    fig.tight_layout()
    path = os.path.join(out_dir, filename)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


def write_condition_report(out_dir: str, ap, r1_hit, queries: Sequence, gallery: Sequence,
                           name: str = "per_condition", title: str = "",
                           bins: dict | None = None, outfits: Mapping[str, str] | None = None) -> tuple[dict, str, str]:
    """condition_report + format_condition_report + plot (``out_dir/<name>.png``).
    Returns (report dict, text table, PNG path)."""
    report = condition_report(ap, r1_hit, queries, gallery, bins, outfits)
    table = format_condition_report(report, title)
    png = plot_condition_report(report, out_dir, f"{name}.png", title)
    return report, table, png
