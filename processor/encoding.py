"""The one clip-encoding path: training's memory rebuild, validation, evaluation, search and the
:class:`processor.inference.FeatureExtractor` API all encode clips here.

* :func:`forward_clips` - the single eval forward of a batch of clips (every path ends in it);
* :func:`encode_tracklets` - tracklets -> one feature row each, through the inference loader;
* :func:`unique_tracklets` / :func:`tracklet_identity` - the distinct tracklets of the three cases, so a
  tracklet that serves in two cases is encoded once;
* :func:`resolve_amp_dtype`, :func:`autocast`, :func:`camera_views` - the precision and SIE-view rules
  that the training step shares with them.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from datasets.build import build_inference_loader
from datasets.detreidx.records import CaseSplit, Tracklet
from model.build import begin_compiled_step, compile_flag
from utils.distributed import is_main_process
from utils.logger import progress_bar

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
    """torch.autocast on ``device`` with ``dtype`` (from :func:`resolve_amp_dtype`); None = a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def camera_views(camids: torch.Tensor) -> torch.Tensor:
    """View ids (0 ground, 1 aerial) of camera ids (B,): camera 0 is the ground camera, the others aerial."""
    return (camids > 0).long()


def forward_clips(model: torch.nn.Module, frames: torch.Tensor, camids: torch.Tensor, views: torch.Tensor,
                  device: torch.device, amp_dtype: torch.dtype | None, outputs: Sequence[str],
                  batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """One eval forward of a batch of clips: the single encoder call of every inference path.

    frames (B,T,3,H,W) normalised, camids (B,), views (B,) -> {name: (B, d) float32 tensor on ``device``}.
    The returned tensors are the caller's own (copies): under MODEL.COMPILE_MODE reduce-overhead the
    model's outputs live in CUDA-graph memory that the next forward overwrites.
    ``batch_size``: the loader's full batch. A compiled model (MODEL.COMPILE) gets a short last batch
    padded to it with copies of its last clip (outputs dropped), so that one compiled graph serves the
    whole pass: each new batch shape would cost another compilation. In eval mode a clip's outputs do
    not depend on its batch-mates, so padding changes no result.
    """
    count = frames.shape[0]
    frames = frames.to(device, non_blocking=True)  # before any padding: pinned host memory copies async
    camids = camids.to(device, non_blocking=True)
    views = views.to(device, non_blocking=True)
    if batch_size and 0 < count < batch_size and compile_flag(model, "compiled_regions"):
        frames, camids, views = (torch.cat([x, x[-1:].expand(batch_size - count, *x.shape[1:])])
                                 for x in (frames, camids, views))
    begin_compiled_step(model)
    with autocast(device, amp_dtype):
        result = model(frames, camids, views)
    return {name: result[name][:count].to(torch.float32, copy=True) for name in outputs}


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
    Evaluation, validation, the memory rebuild and :class:`processor.inference.FeatureExtractor` all encode
    through here.
    """
    outputs = tuple(outputs)
    loader = build_inference_loader(cfg, tracklets)
    amp_dtype = resolve_amp_dtype(cfg.SOLVER.AMP, device)
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(len(tracklets), dtype=torch.float32)
    progress = progress_bar(loader, desc=desc, enabled=is_main_process())  # SAS_PROGRESS; a terminal only
    for batch in progress:
        indices = batch["indices"]
        result = forward_clips(model, batch["frames"], batch["camids"], batch["views"], device, amp_dtype, outputs,
                               batch_size=loader.batch_size)
        for name in outputs:
            feats = result[name].cpu()
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
