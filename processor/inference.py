"""Feature extraction and case evaluation shared by validation during training, evaluate_all_cases.py,
the :class:`FeatureExtractor` API, ``processor.search`` and ``tools.export``.

Every path encodes clips through :func:`forward_clips` (tracklets via :func:`encode_tracklets`);
:func:`load_clips` turns one tracklet's frames into the clips those paths feed the model.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from processor.packages import check_packages

# The public API's entry: another installed `datasets` (Hugging Face) would otherwise be imported on the
# next line in place of the project's, mixed with its submodules or ending in an obscure
# "No module named 'datasets.build'"; this says what shadows what and how to fix it.
check_packages()

from datasets.build import build_inference_loader  # noqa: E402
from datasets.detreidx.records import CaseSplit, Tracklet  # noqa: E402
from datasets.frame_sampling import SAMPLING_MODES  # noqa: E402
from model.build import begin_compiled_step, compile_flag  # noqa: E402
from utils.distributed import is_main_process  # noqa: E402
from utils.logger import progress_bar  # noqa: E402
from utils.metrics import check_finite_features, compute_distance, evaluate_ranking, rank_gallery  # noqa: E402
from utils.protocol import CASE_NAMES, FRAME_EXTENSIONS, natural_sort_key  # noqa: E402
from utils.reranking import k_reciprocal_rerank  # noqa: E402

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
    Evaluation, validation, the memory rebuild and :class:`FeatureExtractor` all encode through here.
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


# ----------------------------------------------------------------------------- using a trained model
GROUND_CAMERA = 0  # camera id of the ground camera in the SIE table (aerial sessions are 1, 2, ...)


class InferenceInputError(ValueError):
    """Input the feature extractor cannot use (missing or empty folder, bad shape, unknown camera id);
    the message names it and says how to fix it."""


def list_frames(folder: str) -> tuple[str, ...]:
    """Frame files (FRAME_EXTENSIONS) directly inside ``folder``, naturally sorted (temporal order); hidden
    files (macOS ``._frame.jpg``) are skipped, as the dataset scan and search skip them."""
    if not os.path.isdir(folder):
        raise InferenceInputError(f"Tracklet folder not found: {folder}")
    with os.scandir(folder) as entries:
        names = [e.name for e in entries
                 if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(FRAME_EXTENSIONS)]
    if not names:
        raise InferenceInputError(
            f"Tracklet folder {folder} holds no frames ({'/'.join(FRAME_EXTENSIONS)} files). "
            "Copy its frames there or leave the folder out."
        )
    names.sort(key=natural_sort_key)
    return tuple(os.path.join(folder, name) for name in names)


def plain_tracklet(frames: Sequence[str], camid: int, name: str) -> Tracklet:
    """A Tracklet record for frames outside the DetReIDX layout: no identity, no capture metadata.

    The only place outside datasets/ that builds Tracklet records (keep it so when their fields change).
    """
    return Tracklet(frames=tuple(frames), pid=-1, camid=int(camid), view="aerial" if camid != GROUND_CAMERA else "ground",
                    name=name, session=None, height=None, distance=None, angle=None, aerial_distance=None)


def load_clips(frames: str | os.PathLike | Sequence[str | os.PathLike], cfg) -> torch.Tensor:
    """One tracklet's frames -> the clips evaluation feeds the model: (K, T, 3, H, W) float32, CPU.

    ``frames``: a tracklet folder (its frame files, naturally sorted, as :func:`list_frames`) or frame
    paths in temporal order; ``cfg``: the model's config (``FeatureExtractor.cfg``; a checkpoint's
    stored config). This runs the inference loader of evaluation and :class:`FeatureExtractor`
    (``datasets.build.build_inference_loader``, in this process) on this one tracklet, so nothing is
    re-implemented: the frames are chosen by ``datasets.frame_sampling.inference_clips`` with TEST.SEQ_LEN
    and TEST.SAMPLING (a tracklet shorter than T is padded with its last frame), decoded, resized to
    INPUT.SIZE_TEST (bicubic, antialiased when shrinking) and normalised with INPUT.PIXEL_MEAN/STD.
    T = TEST.SEQ_LEN; K = 1 for "even" sampling, ceil(frames / T) chunks for "dense".

    The result feeds :meth:`FeatureExtractor.embed_clips` or an exported graph (``tools.export``) as it
    is. With K > 1 (dense), the tracklet's embedding in evaluation is the L2-normalised mean of the K
    clips' unnormalised features.
    """
    if isinstance(frames, (str, os.PathLike)):
        folder = os.fspath(frames)
        paths, name = list_frames(folder), os.path.basename(os.path.normpath(folder))
    else:
        paths, name = tuple(os.fspath(f) for f in frames), "tracklet"
        if not paths:
            raise InferenceInputError("load_clips got an empty frame list: a tracklet needs at least one frame")
    in_process = cfg.clone()  # one tracklet: no loader worker processes
    in_process.defrost()
    in_process.DATALOADER.NUM_WORKERS = 0
    in_process.freeze()
    loader = build_inference_loader(in_process, [plain_tracklet(paths, GROUND_CAMERA, name)])
    return torch.cat([batch["frames"] for batch in loader])


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch.device (CUDA must be visible)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceInputError(f"device {device} asks for CUDA but no GPU is visible; use 'cpu' or 'auto'")
    return device


def checkpoint_config(stored_yaml: str, source: str, **settings):
    """The config stored in a checkpoint with inference ``settings`` applied and pretrained paths cleared.

    settings: MODEL_DEVICE, SOLVER_AMP, TEST_SAMPLING, DATALOADER_NUM_WORKERS, TEST_IMS_PER_BATCH,
    MODEL_COMPILE (None = keep the stored value). The checkpoint holds every weight, so the initial pretrained
    files are never read again.
    """
    from configs import PRETRAINED_KEYS, clear_keys, config_from_yaml_text
    from utils.checkpoint import CheckpointError

    try:
        cfg = config_from_yaml_text(stored_yaml)
    except Exception as exc:  # noqa: BLE001 - yaml and yacs raise several types besides ConfigError
        raise CheckpointError(f"The config stored in {source} cannot be read by this code version: {exc}") from None
    cfg.defrost()
    for key, value in settings.items():
        if value is not None:
            section, name = key.split("_", 1)
            cfg[section][name] = type(cfg[section][name])(value)
    clear_keys(cfg, PRETRAINED_KEYS)
    cfg.freeze()
    return cfg


def model_from_checkpoint(state: dict, cfg, path: str) -> torch.nn.Module:
    """The SAS model of a train.py checkpoint ``state`` (built from ``cfg``, weights loaded), on CPU.

    The one place that turns a checkpoint into a model (FeatureExtractor, evaluate_all_cases.py).
    The checkpoint holds every weight, so the backbone's "no pretrained weights" warning is silenced;
    the SMPL files the config names are still read to build PRSD (checked first).
    """
    from model.build import build_model, check_weight_files
    from utils.checkpoint import load_model_state

    check_weight_files(cfg)
    meta = state["meta"]
    backbone_logger = logging.getLogger("model.backbone")
    level = backbone_logger.level
    backbone_logger.setLevel(logging.ERROR)
    try:
        model = build_model(cfg, num_classes=int(meta["num_classes"]), num_cameras=int(meta["num_cameras"]))
    finally:
        backbone_logger.setLevel(level)
    load_model_state(model, state["model"], path)
    return model


class FeatureExtractor:
    """Embeds tracklets with a trained checkpoint; the inference path of evaluate_all_cases.py.

    Inputs (each with optional camera ids: one int for all, or one per tracklet/clip; default
    ``GROUND_CAMERA`` = 0, the ground camera; aerial sessions are 1, 2, ... as in training. The SIE
    view follows: camera 0 is ground, any other aerial):

    * :meth:`embed_folders` - a list of tracklet folders (the frame files directly inside each,
      naturally sorted) -> (N, E) float32 numpy;
    * :meth:`embed_frame_lists` - a list of frame-path lists in temporal order -> (N, E) float32 numpy;
    * :meth:`embed_clips` - a (B, T, 3, H, W) tensor already resized to INPUT.SIZE_TEST and normalised
      with INPUT.PIXEL_MEAN/STD -> (B, E) float32 tensor on the input's device; :meth:`load_clips`
      makes such clips from a tracklet's frames exactly as the other two methods do.

    Calling the object dispatches on the input type. Embeddings are L2-normalised (cosine distance
    = 1 - dot product); a model that produces NaN/Inf raises NonFiniteFeaturesError naming its
    checkpoint. Frames are sampled, resized and normalised as the stored config says
    (TEST.SEQ_LEN, TEST.SAMPLING, INPUT.SIZE_TEST, INPUT.PIXEL_MEAN/STD): no YAML file is read.
    """

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device, num_cameras: int,
                 checkpoint_path: str | None = None):
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.num_cameras = int(num_cameras)
        # Named by NonFiniteFeaturesError when the model produces NaN/Inf embeddings.
        self.checkpoint_path = checkpoint_path
        self.graph = EmbeddingGraph(self.model, resolve_amp_dtype(cfg.SOLVER.AMP, device),
                                    batch_size=max(int(cfg.TEST.IMS_PER_BATCH), 1))

    @classmethod
    def from_checkpoint(cls, path: str, device: str | torch.device = "auto", amp: str = "auto",
                        sampling: str | None = None, num_workers: int | None = None,
                        batch_size: int | None = None, compile: bool | None = None) -> "FeatureExtractor":
        """Rebuild the model from a train.py checkpoint (its stored config and weights).

        device: "auto" (CUDA when available) or a torch device; amp: auto / bf16 / fp16 / off;
        sampling: None (the stored TEST.SAMPLING) or "even" / "dense"; num_workers / batch_size:
        None keeps the stored DATALOADER.NUM_WORKERS / TEST.IMS_PER_BATCH; compile: None keeps the
        stored MODEL.COMPILE (False for a plain module, e.g. to export it). Raises CheckpointError
        for a file that is not a readable train.py checkpoint.
        """
        from utils.checkpoint import load_train_checkpoint

        state = load_train_checkpoint(path)
        if sampling is not None and sampling not in SAMPLING_MODES:
            raise InferenceInputError(f"sampling must be None or one of {SAMPLING_MODES}, got {sampling!r}")
        torch_device = resolve_device(device)
        cfg = checkpoint_config(state["config"], path, MODEL_DEVICE=str(torch_device), SOLVER_AMP=amp,
                                TEST_SAMPLING=sampling, DATALOADER_NUM_WORKERS=num_workers,
                                TEST_IMS_PER_BATCH=batch_size, MODEL_COMPILE=compile)
        model = model_from_checkpoint(state, cfg, os.fspath(path))
        return cls(model, cfg, torch_device, int(state["meta"]["num_cameras"]), checkpoint_path=os.fspath(path))

    @property
    def embedding_dim(self) -> int:
        return int(self.model.embedding_dim)

    def load_clips(self, frames: str | os.PathLike | Sequence[str | os.PathLike]) -> torch.Tensor:
        """A tracklet folder or frame-path list -> (K, T, 3, H, W): the clips :meth:`embed_folders` and
        :meth:`embed_frame_lists` feed the model for it (see :func:`load_clips`); input of :meth:`embed_clips`
        and of the exported graph."""
        return load_clips(frames, self.cfg)

    def __call__(self, inputs, camids=None):
        """Dispatch: a tensor -> :meth:`embed_clips`; strings -> :meth:`embed_folders`; lists -> :meth:`embed_frame_lists`."""
        if isinstance(inputs, torch.Tensor):
            return self.embed_clips(inputs, camids)
        inputs = list(inputs)
        if inputs and all(isinstance(item, (str, os.PathLike)) for item in inputs):
            return self.embed_folders(inputs, camids)
        return self.embed_frame_lists(inputs, camids)

    def _camids(self, camids, count: int) -> list[int]:
        if camids is None:
            camids = GROUND_CAMERA
        if isinstance(camids, (int, np.integer)):
            camids = [int(camids)] * count
        camids = [int(c) for c in (camids.tolist() if isinstance(camids, (np.ndarray, torch.Tensor)) else camids)]
        if len(camids) != count:
            raise InferenceInputError(f"got {len(camids)} camera ids for {count} inputs; give one per input or one int")
        bad = sorted({c for c in camids if not 0 <= c < max(self.num_cameras, 1)})
        if bad:
            raise InferenceInputError(
                f"camera ids {bad} are outside the model's {self.num_cameras} cameras "
                f"(0 = ground, 1..{self.num_cameras - 1} = aerial sessions)"
            )
        return camids

    def embed_folders(self, folders: Sequence[str], camids=None) -> np.ndarray:
        """(N,) tracklet folders -> (N, E) float32 L2-normalised embeddings."""
        folders = [os.fspath(f) for f in folders]
        return self.embed_frame_lists([list_frames(f) for f in folders], camids,
                                      names=[os.path.basename(os.path.normpath(f)) for f in folders])

    def embed_frame_lists(self, frame_lists: Sequence[Sequence[str]], camids=None,
                          names: Sequence[str] | None = None) -> np.ndarray:
        """(N,) lists of frame paths (temporal order) -> (N, E) float32 L2-normalised embeddings."""
        frame_lists = [list(frames) for frames in frame_lists]
        for i, frames in enumerate(frame_lists):
            if not frames:
                raise InferenceInputError(f"frame list {i} is empty: every tracklet needs at least one frame")
        camids = self._camids(camids, len(frame_lists))
        names = names or [f"tracklet{i}" for i in range(len(frame_lists))]
        tracklets = [plain_tracklet(frames, camid, name) for frames, camid, name in zip(frame_lists, camids, names)]
        return self.embed_tracklets(tracklets).numpy()

    @property
    def model_name(self) -> str:
        """What error messages call the model: its checkpoint path, when it came from one."""
        return self.checkpoint_path or "The model"

    def embed_tracklets(self, tracklets: Sequence[Tracklet], desc: str = "embed") -> torch.Tensor:
        """(N,) Tracklet records -> (N, E) float32 CPU tensor, L2-normalised.

        Raises NonFiniteFeaturesError (naming the checkpoint and the first bad tracklet) when the model
        produces NaN/Inf for any tracklet, instead of returning embeddings that rank nothing.
        """
        if not tracklets:
            return torch.zeros(0, self.embedding_dim)
        features = encode_tracklets(self.model, self.cfg, tracklets, self.device, desc=desc)["embedding"]
        embeddings = F.normalize(features, dim=1)
        check_finite_features(embeddings, self.model_name, [t.name for t in tracklets])
        return embeddings

    @torch.no_grad()
    def embed_clips(self, frames: torch.Tensor, camids=None) -> torch.Tensor:
        """frames (B, T, 3, H, W) normalised, (H, W) = INPUT.SIZE_TEST -> (B, E) float32 L2-normalised,
        on the device of ``frames``; clips run in batches of TEST.IMS_PER_BATCH."""
        size = tuple(int(v) for v in self.cfg.INPUT.SIZE_TEST)
        if frames.dim() != 5 or frames.shape[2] != 3 or tuple(frames.shape[-2:]) != size:
            raise InferenceInputError(
                f"clips must be (B, T, 3, {size[0]}, {size[1]}) (INPUT.SIZE_TEST of the checkpoint), got {tuple(frames.shape)}"
            )
        camid_tensor = torch.tensor(self._camids(camids, frames.shape[0]), dtype=torch.long, device=self.device)
        batch = self.graph.batch_size
        chunks = [self.graph(frames[i:i + batch].to(self.device), camid_tensor[i:i + batch])
                  for i in range(0, frames.shape[0], batch)]
        embedding = torch.cat(chunks) if chunks else torch.zeros(0, self.embedding_dim)
        check_finite_features(embedding, self.model_name)
        return embedding.to(frames.device)


class EmbeddingGraph(torch.nn.Module):
    """The eval embedding graph: frames (B,T,3,H,W) normalised, camids (B,) long -> (B,E) float32
    L2-normalised embedding. The SIE view follows the camera id (0 ground, others aerial).

    :meth:`FeatureExtractor.embed_clips` runs it (``batch_size``: its batches, see :func:`forward_clips`)
    and ``tools.export`` exports it (amp_dtype None).
    """

    def __init__(self, model: torch.nn.Module, amp_dtype: torch.dtype | None = None, batch_size: int | None = None):
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        self.batch_size = batch_size

    def forward(self, frames: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        embedding = forward_clips(self.model, frames, camids, camera_views(camids), frames.device, self.amp_dtype,
                                  ("embedding",), batch_size=self.batch_size)["embedding"]
        return F.normalize(embedding, dim=1)
