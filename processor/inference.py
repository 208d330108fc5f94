"""Feature extraction and case evaluation shared by validation during training and evaluate_all_cases.py."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from datasets.build import build_inference_loader
from datasets.detreidx import CASE_NAMES, CaseSplit, Tracklet
from utils.distributed import is_main_process
from utils.metrics import compute_distance, evaluate_ranking, rank_gallery
from utils.reranking import k_reciprocal_rerank

logger = logging.getLogger(__name__)


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``SOLVER.AMP`` -> autocast dtype (None = full precision).

    auto: bf16 on CUDA devices that support it, fp16 on older CUDA devices, off on CPU.
    """
    amp = amp.lower()
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise ValueError(f"SOLVER.AMP must be auto, bf16, fp16 or off, got {amp!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def encode_tracklets(
    model: torch.nn.Module,
    cfg,
    tracklets: Sequence[Tracklet],
    device: torch.device,
    outputs: Iterable[str] = ("embedding",),
    desc: str = "encode",
) -> dict[str, torch.Tensor]:
    """Run the model in eval mode over ``tracklets`` and return one row per tracklet.

    Returns {name: (N, d) float32 CPU tensor} for each requested model output. With dense test
    sampling a tracklet yields several chunks; their features are averaged (index_add by tracklet).
    """
    outputs = tuple(outputs)
    loader = build_inference_loader(cfg, tracklets)
    amp_dtype = resolve_amp_dtype(cfg.SOLVER.AMP, device)
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(len(tracklets), dtype=torch.float32)
    progress = tqdm(loader, desc=desc, leave=False, disable=not is_main_process())
    for batch in progress:
        frames = batch["frames"].to(device, non_blocking=True)
        camids = batch["camids"].to(device, non_blocking=True)
        views = batch["views"].to(device, non_blocking=True)
        indices = batch["indices"]
        with autocast(device, amp_dtype):
            result = model(frames, camids, views)
        for name in outputs:
            feats = result[name].float().cpu()
            if name not in sums:
                sums[name] = torch.zeros(len(tracklets), feats.shape[1])
            sums[name].index_add_(0, indices, feats)
        counts.index_add_(0, indices, torch.ones(len(indices)))
    model.train(was_training)
    skipped = getattr(loader.dataset, "skipped_frames", 0)
    if skipped:
        logger.warning("%s: skipped %d unreadable frames (DATASETS.SKIP_CORRUPT_FRAMES)", desc, skipped)
    if len(tracklets) and (counts == 0).any():
        missing = int((counts == 0).sum())
        raise RuntimeError(f"{missing} tracklets produced no clip in the inference loader")
    return {name: total / counts.clamp(min=1).unsqueeze(1) for name, total in sums.items()}


def tracklet_identity(t: Tracklet) -> tuple:
    """Two records with this key hold the same frames: same pid, tracklet name and frame file names.

    DetReIDX stores a tracklet used by two cases (case 1 query = case 2 gallery) in both case
    folders; this key lets such copies share one encoding.
    """
    return (t.pid, t.name, t.frame_names)


def unique_tracklets(cases: Mapping[int, CaseSplit]) -> tuple[list[Tracklet], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """All distinct tracklets of ``cases`` and, per case, query/gallery indices into them.

    A tracklet that serves in several cases is encoded once (see :func:`tracklet_identity`).
    """
    order: dict[tuple, int] = {}
    tracklets: list[Tracklet] = []
    index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for case, split in sorted(cases.items()):
        parts = []
        for part in (split.query, split.gallery):
            ids = []
            for t in part:
                key = tracklet_identity(t)
                if key not in order:
                    order[key] = len(tracklets)
                    tracklets.append(t)
                ids.append(order[key])
            parts.append(np.asarray(ids, dtype=np.int64))
        index[case] = (parts[0], parts[1])
    return tracklets, index


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
    """Rank every query of every case and, where the case has ground truth, compute its metrics."""
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
    """Per-case figures, mAP-3 (pooled over the queries of all cases) and the plain mean over cases.

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
        valid = {c: int(r.metrics["num_valid"]) for c, r in scored.items()}
        total = sum(valid.values())
        if total:
            summary["mAP-3"] = sum(100.0 * float(scored[c].metrics["mAP"]) * n for c, n in valid.items()) / total
        summary["mean_mAP"] = float(np.mean([100.0 * float(r.metrics["mAP"]) for r in scored.values()]))
        summary["mean_R1"] = float(np.mean([100.0 * float(r.metrics["R1"]) for r in scored.values()]))
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
