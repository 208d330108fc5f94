"""The three-case evaluation: rank every query of each case, score it where ground truth exists, pool
the figures (mAP-3, the mean over cases) and run it end to end - encode once, write the CSV, the JSON
and the reports.

* :func:`evaluate_cases` -> {case: :class:`CaseResult`} (ranking and metrics), distances by
  :func:`case_distance`; :func:`summarize` / :func:`format_summary` make the summary and its table;
* :func:`run_case_evaluation` - the whole run of evaluate_all_cases.py and of validation during training.

Clips are encoded by :mod:`processor.encoding`, the path every other user of the model shares.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from datasets.detreidx.records import CaseSplit
from processor.encoding import encode_tracklets, unique_tracklets
from utils.fileio import atomic_write, remove_stale_temp_files, write_text_atomic
from utils.metrics import check_finite_features, compute_distance, evaluate_ranking, pool_cases, rank_gallery
from utils.protocol import CASE_NAMES
from utils.report import clothes_changed_summary
from utils.reranking import k_reciprocal_rerank
from utils.submission import write_submission

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- ranking and scoring
@dataclass
class CaseResult:
    """The outcome of one case: its ranking (for the CSV) and, with ground truth, its metrics."""

    case: int
    query_names: list[str]
    gallery_names: list[str]
    ranking: np.ndarray  # (Q, G) gallery indices, best first
    metrics: dict | None = None  # evaluate_ranking output (fractions), None without ground truth
    distmat: torch.Tensor | None = field(default=None, repr=False)


def case_distance(cfg, qf: torch.Tensor, gf: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(Q, G) distances per TEST.DISTANCE, optionally k-reciprocal re-ranked (TEST.RERANK)."""
    if cfg.TEST.RERANK:
        return k_reciprocal_rerank(
            qf.to(device), gf.to(device), k1=cfg.TEST.RERANK_K1, k2=cfg.TEST.RERANK_K2,
            lambda_value=cfg.TEST.RERANK_LAMBDA, device=device,
        ).float().cpu()
    return compute_distance(qf.to(device), gf.to(device), metric=cfg.TEST.DISTANCE, chunk=cfg.TEST.QUERY_CHUNK).cpu()


def evaluate_cases(
    cfg,
    cases: Mapping[int, CaseSplit],
    features: torch.Tensor,
    index: Mapping[int, tuple[np.ndarray, np.ndarray]],
    device: torch.device,
    keep_distances: bool = False,
) -> dict[int, CaseResult]:
    """Rank every query of every case and, where the case has ground truth, compute its metrics.

    features (N, d): one row per unique tracklet; index {case: (query rows (Q,), gallery rows (G,)) into
    it} (both from :func:`processor.encoding.unique_tracklets`). ``keep_distances``: keep each (Q, G)
    distance matrix in its CaseResult.
    """
    results = {}
    for case, split in sorted(cases.items()):
        q_idx, g_idx = index[case]
        distmat = case_distance(cfg, features[q_idx], features[g_idx], device)
        ranking = rank_gallery(distmat, chunk=cfg.TEST.QUERY_CHUNK)
        metrics = None
        if split.has_ground_truth:
            metrics = evaluate_ranking(
                distmat,
                np.array([t.pid for t in split.query]), np.array([t.pid for t in split.gallery]),
                np.array([t.camid for t in split.query]), np.array([t.camid for t in split.gallery]),
                [t.name for t in split.query], [t.name for t in split.gallery],
                junk_rule=cfg.TEST.JUNK_RULE, ap_mode=cfg.TEST.AP_MODE, chunk=cfg.TEST.QUERY_CHUNK,
            )
        results[case] = CaseResult(
            case=case,
            query_names=[t.name for t in split.query],
            gallery_names=[t.name for t in split.gallery],
            ranking=ranking,
            metrics=metrics,
            distmat=distmat if keep_distances else None,
        )
    return results


def summarize(results: Mapping[int, CaseResult], junk_rule: str, ap_mode: str) -> dict:
    """Per-case figures, mAP-3 (pooled over the queries of all cases) and the plain means over cases
    (``utils.metrics.pool_cases``; over the cases with a query that has a true match).

    Figures are percentages. Cases without ground truth are listed as unavailable, never as zeros.
    """
    summary: dict = {"cases": {}, "metrics_available": False}
    scored = {c: r for c, r in results.items() if r.metrics is not None}
    for case, result in sorted(results.items()):
        entry = {"name": CASE_NAMES[case], "num_queries": len(result.query_names),
                 "num_gallery": len(result.gallery_names)}
        if result.metrics is not None:
            m = result.metrics
            entry.update({k: 100.0 * float(m[k]) for k in ("mAP", "mINP", "R1", "R5", "R10", "R20")})
            entry["num_valid_queries"] = int(m["num_valid"])
        else:
            entry["metrics"] = "unavailable (no ground truth)"
        summary["cases"][case] = entry
    if scored:
        summary["metrics_available"] = True
        pooled = pool_cases({c: r.metrics for c, r in scored.items()})
        if pooled["num_valid"]:
            summary["mAP-3"] = 100.0 * pooled["mAP-3"]
        summary["mean_mAP"] = 100.0 * pooled["mAP_mean_over_cases"]
        summary["mean_R1"] = 100.0 * pooled["R1_mean_over_cases"]
        summary["cases_scored"] = sorted(scored)
    summary["rules"] = {"junk": junk_rule, "ap": ap_mode}
    return summary


def format_summary(summary: Mapping) -> str:
    """A text table of per-case mAP / R1 / R5 / R10 / R20 / mINP plus mAP-3 and the mean."""
    lines = [f"{'case':<28}{'queries':>8}{'mAP':>8}{'R1':>8}{'R5':>8}{'R10':>8}{'R20':>8}{'mINP':>8}"]
    for case, entry in sorted(summary["cases"].items()):
        if "mAP" in entry:
            lines.append(
                f"{entry['name']:<28}{entry['num_queries']:>8}" + "".join(
                    f"{entry[k]:>8.2f}" for k in ("mAP", "R1", "R5", "R10", "R20", "mINP"))
            )
        else:
            lines.append(f"{entry['name']:<28}{entry['num_queries']:>8}   metrics unavailable (no ground truth)")
    if summary.get("metrics_available"):
        if "mAP-3" in summary:
            lines.append(f"mAP-3 (pooled over queries): {summary['mAP-3']:.2f}")
        lines.append(f"mean over cases: mAP {summary['mean_mAP']:.2f}  R1 {summary['mean_R1']:.2f}")
    else:
        lines.append("Metrics unavailable: the test set has no ground truth (anonymised identities).")
    rules = summary.get("rules", {})
    if rules.get("junk"):
        lines.append(f"rules: junk={rules['junk']} AP={rules['ap']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the evaluation run
def save_features_npz(path: str, features: torch.Tensor, tracklets, index: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Features of every unique tracklet plus, per case n, ``case{n}_query`` / ``case{n}_gallery`` indices."""
    arrays = {
        "features": features.numpy().astype(np.float32),
        "pids": np.array([t.pid for t in tracklets], dtype=np.int64),
        "camids": np.array([t.camid for t in tracklets], dtype=np.int64),
        "names": np.array([t.name for t in tracklets]),
    }
    for case, (q_idx, g_idx) in index.items():
        arrays[f"case{case}_query"] = q_idx
        arrays[f"case{case}_gallery"] = g_idx

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def write_json(path: str, payload: Mapping) -> None:
    write_text_atomic(path, to_json(payload, indent=2))


def to_json(payload, indent: int | None = None) -> str:
    """JSON text of a summary (NumPy scalars and arrays as plain numbers and lists)."""
    return json.dumps(payload, indent=indent, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_case_evaluation(
    cfg,
    model: torch.nn.Module,
    cases: Mapping[int, CaseSplit],
    device: torch.device,
    output_dir: str,
    csv_path: str | None = None,
    json_path: str | None = None,
    save_features: str | None = None,
    visualize: int = 0,
    condition_report: bool = True,
    extra: Mapping | None = None,
    verbose: bool = True,
    title: str = "Results",
) -> dict:
    """Evaluate ``cases`` with ``model``; returns the summary dict (also written to ``json_path``).

    Every unique tracklet across the cases is encoded exactly once. The CSV (when ``csv_path``) is
    written whether or not ground truth exists; metrics are only reported where it does. Plots and
    rank lists go to ``output_dir``. ``verbose`` False logs the progress line and the results table
    (headed ``title``) at DEBUG only: validation during training logs its own one-line summary.
    """
    if not cases:
        raise ValueError("No cases to evaluate: check DATASETS.ROOT_DIR and --cases")
    remove_stale_temp_files(output_dir)   # left by a killed earlier evaluation (CSV, JSON, plots)
    level = logging.INFO if verbose else logging.DEBUG
    tracklets, index = unique_tracklets(cases)
    logger.log(level, "Encoding %d unique tracklets for cases %s", len(tracklets), sorted(cases))
    features = encode_tracklets(model, cfg, tracklets, device, desc="test")["embedding"]
    check_finite_features(features, (extra or {}).get("checkpoint") or "The model", [t.name for t in tracklets])
    if save_features:
        save_features_npz(save_features, features, tracklets, index)
        logger.info("Saved features to %s", save_features)
    results = evaluate_cases(cfg, cases, features, index, device)
    summary = summarize(results, cfg.TEST.JUNK_RULE, cfg.TEST.AP_MODE)
    summary["num_unique_tracklets"] = len(tracklets)
    outfits = _tracklet_outfits(cfg)
    clothes = clothes_changed_summary(results, outfits, cfg.TEST.AP_MODE)
    if clothes:   # datasets that label outfits (the synthetic one): clothes-changed queries as their own group
        summary["clothes_changed"] = clothes
    if extra:
        summary.update(extra)
    logger.log(level, "%s\n%s%s", title, format_summary(summary), _format_clothes(clothes))
    if csv_path:
        write_submission(csv_path, _submission_rows(results))
        summary["csv"] = csv_path
        logger.info("Wrote submission CSV %s", csv_path)
    if condition_report and summary["metrics_available"]:
        summary["per_condition"] = _condition_report(results, cases, output_dir, outfits)
    if visualize > 0:
        _visualize(results, cases, output_dir, visualize)
    if json_path:
        write_json(json_path, summary)
        logger.info("Wrote %s", json_path)
    return summary


def _submission_rows(results: Mapping[int, CaseResult]):
    for case, result in sorted(results.items()):
        for q, order in zip(result.query_names, result.ranking):
            yield case, q, [result.gallery_names[g] for g in order]


def _tracklet_outfits(cfg) -> dict | None:
    """{tracklet name: outfit key} when the data root labels outfits (the synthetic generator does), else None."""
    from datasets.synthetic import load_tracklet_outfits

    return load_tracklet_outfits(cfg.DATASETS.ROOT_DIR)


def _format_clothes(clothes: Mapping | None) -> str:
    """The clothes-changed line under the results table ("" without outfit labels)."""
    if not clothes:
        return ""
    parts = [f"{group}: mAP {'-' if v['mAP'] is None else format(v['mAP'], '.2f')} R1 "
             f"{'-' if v['R1'] is None else format(v['R1'], '.2f')} ({v['count']} queries)"
             for group, v in clothes.items()]
    return "\nClothes-changing protocol (same-outfit matches are junk), all cases: " + " | ".join(parts)


def _condition_report(results: Mapping[int, CaseResult], cases: Mapping[int, CaseSplit], output_dir: str,
                      outfits: Mapping[str, str] | None = None) -> dict:
    """Per-condition mAP / R1 of the aerial queries of each scored case (table in the log, PNG, dict)."""
    from utils.report import write_condition_report

    per_case = {}
    for case, result in sorted(results.items()):
        split = cases[case]
        if result.metrics is None or not any(q.view == "aerial" for q in split.query):
            continue
        report, table, png = write_condition_report(
            output_dir, result.metrics["AP"], result.metrics["R1_hit"], split.query, split.gallery,
            name=f"per_condition_case{case}", title=CASE_NAMES[case], outfits=outfits,
        )
        logger.info("Per-condition results, aerial queries of %s\n%s\n(plot: %s)", CASE_NAMES[case], table, png)
        per_case[case] = report
    return per_case


def _visualize(results: Mapping[int, CaseResult], cases: Mapping[int, CaseSplit], output_dir: str, count: int) -> None:
    from utils.visualize import visualize_ranklists

    for case, result in sorted(results.items()):
        split = cases[case]
        visualize_ranklists(
            os.path.join(output_dir, f"ranklists_case{case}"),
            queries=split.query, galleries=split.gallery, ranking=result.ranking,
            q_pids=np.array([t.pid for t in split.query]), g_pids=np.array([t.pid for t in split.gallery]),
            num_queries=count,
        )


def select_cases(cases: Mapping[int, CaseSplit], wanted: Sequence[int], root: str = "") -> dict[int, CaseSplit]:
    """The ``wanted`` cases of ``cases``; a missing one is a FileNotFoundError naming its folder."""
    from utils.protocol import CASE_FOLDERS

    missing = [c for c in wanted if c not in cases]
    if missing:
        folders = ", ".join(os.path.join(root, CASE_FOLDERS[c]) if c in CASE_FOLDERS else f"case {c} (no such case)"
                            for c in missing)
        raise FileNotFoundError(
            f"Case(s) {missing} not found under the dataset root: {folders}; present: {sorted(cases)}. "
            "Check DATASETS.ROOT_DIR or the --cases argument."
        )
    return {c: cases[c] for c in wanted}
