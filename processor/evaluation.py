"""The three-case evaluation run: encode once, rank, score, write the CSV, the JSON and the reports."""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np
import torch

from datasets.detreidx.records import CaseSplit
from processor.inference import (
    CaseResult,
    encode_tracklets,
    evaluate_cases,
    format_summary,
    summarize,
    unique_tracklets,
)
from utils.checkpoint import atomic_write, write_text_atomic
from utils.fileio import remove_stale_temp_files
from utils.metrics import check_finite_features
from utils.protocol import CASE_NAMES
from utils.report import clothes_changed_summary
from utils.submission import write_submission

logger = logging.getLogger(__name__)


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
