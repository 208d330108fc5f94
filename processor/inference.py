"""The public inference API: use a trained checkpoint on any tracklets.

* :class:`FeatureExtractor` - tracklet folders, frame lists or clips -> L2-normalised embeddings (the
  inference path of evaluate_all_cases.py); :class:`EmbeddingGraph` - its embedding graph (what
  ``tools.export`` exports);
* :func:`model_from_checkpoint`, :func:`checkpoint_config`, :func:`resolve_device` - a train.py checkpoint
  -> model, config and device;
* :func:`load_clips`, :func:`list_frames`, :func:`plain_tracklet` - a tracklet's frames -> the clips the
  model is fed; :class:`InferenceInputError` - input they cannot use, said plainly.

Clips are encoded by :mod:`processor.encoding` (the path training, evaluation and search share); the
three-case evaluation is :mod:`processor.evaluation`.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from processor.packages import check_packages

# The public API's entry: another installed `datasets` (Hugging Face) would otherwise be imported on the
# next line in place of the project's, mixed with its submodules or ending in an obscure
# "No module named 'datasets.build'"; this says what shadows what and how to fix it.
check_packages()

from datasets.build import build_inference_loader  # noqa: E402
from datasets.detreidx.records import Tracklet  # noqa: E402
from datasets.frame_sampling import SAMPLING_MODES  # noqa: E402
from processor.encoding import camera_views, encode_tracklets, forward_clips, resolve_amp_dtype  # noqa: E402
from utils.metrics import check_finite_features  # noqa: E402
from utils.protocol import FRAME_EXTENSIONS, natural_sort_key  # noqa: E402

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

    :meth:`FeatureExtractor.embed_clips` runs it (``batch_size``: its batches, see
    :func:`processor.encoding.forward_clips`) and ``tools.export`` exports it (amp_dtype None).
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
