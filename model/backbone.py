"""CLIP ViT image tower (open_clip architecture) for video ReID frames.

The tower is open_clip's ``VisionTransformer`` built with random weights (never downloaded
implicitly), adapted to the ReID setting:

* non-square input (256x128, 252x126) and an optional overlapping patch stride: the patch grid is
  ``h = (H - p) // s + 1``, ``w = (W - p) // s + 1`` and the pretrained square positional embedding
  is resized (bilinear as the authors, or bicubic: ``MODEL.POS_EMBED_INTERP``; in fp32) to ``h x w``
  with the class position kept;
* SIE: a learned camera embedding (and optionally a view embedding) added to the class token
  before the positional embedding;
* frozen patch projection, class embedding, positional embedding and ``ln_pre`` (config key);
* the forward returns every token after ``ln_post`` and their projection, not just the pooled
  class token.

Pretrained weights come from ``MODEL.PRETRAIN_PATH`` (an OpenAI TorchScript archive, an
open_clip / timm state dict, or a ``.safetensors`` file) or, on an online machine, from an
open_clip pretrained tag (``MODEL.PRETRAIN_TAG``). OpenAI archives are read without executing the
archive: a restricted unpickler rebuilds only the tensors (see ``read_torchscript_state_dict``).

open_clip is imported lazily: importing this module stays cheap and a missing weight file is
reported before any heavy import.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import pickle
import socket
import threading
import zipfile
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# Small towers for tests and the CPU demo: built without any download.
TINY_CONFIGS: Dict[str, dict] = {
    "tiny-vit-16": dict(width=64, layers=2, heads=2, patch_size=16, proj_dim=32, mlp_ratio=4.0),
    "tiny-vit-8": dict(width=64, layers=2, heads=2, patch_size=8, proj_dim=32, mlp_ratio=4.0),
}

# Vision-config keys of open_clip model configs that this tower reproduces; any other key
# (timm towers, attentional pooling, layer scale, ...) changes the architecture and is refused.
_SUPPORTED_OPEN_CLIP_VISION_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}

# Parameters that the tower does not get from pretrained CLIP weights.
NEW_PARAMETER_NAMES = ("sie_camera", "sie_view")

# Parameters frozen by MODEL.FREEZE_PATCH_EMBED (the patch embedding stage of the tower).
FROZEN_PARAMETER_PREFIXES = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")


class PretrainedWeightsError(FileNotFoundError):
    """Pretrained weights were asked for but cannot be found (the message says what to get)."""


# ----------------------------------------------------------------------------- configs and grids
def vision_config(name: str) -> dict:
    """Architecture of a named tower: width, layers, heads, patch_size, proj_dim, mlp_ratio.

    ``name`` is a tiny built-in (``TINY_CONFIGS``) or a local open_clip model name such as
    ``"ViT-B-16"`` / ``"ViT-L-14"`` (hub names are refused: building must not download).
    """
    if name in TINY_CONFIGS:
        return dict(TINY_CONFIGS[name])
    if ":" in name:
        raise ValueError(f"MODEL.BACKBONE {name!r}: hub model names are not supported; use a local open_clip "
                         "name such as ViT-B-16 or ViT-L-14 and give the weights with MODEL.PRETRAIN_PATH.")
    from open_clip import get_model_config, list_models

    model_cfg = get_model_config(name)
    if model_cfg is None:
        vit_names = [n for n in list_models() if n.startswith("ViT-")][:12]
        raise ValueError(f"MODEL.BACKBONE {name!r} is neither a built-in tiny tower {sorted(TINY_CONFIGS)} nor an "
                         f"open_clip model name (e.g. {', '.join(vit_names)}).")
    vision = dict(model_cfg["vision_cfg"])
    unsupported = sorted(set(vision) - _SUPPORTED_OPEN_CLIP_VISION_KEYS)
    if unsupported or not isinstance(vision.get("layers"), int):
        raise ValueError(f"MODEL.BACKBONE {name!r}: its open_clip vision config uses {unsupported or 'a ResNet'}, "
                         "which this plain-ViT tower does not reproduce. Use ViT-B-16, ViT-L-14 or a similar ViT.")
    width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    return dict(width=width, layers=int(vision["layers"]), heads=width // head_width,
                patch_size=int(vision.get("patch_size", 16)), proj_dim=int(model_cfg["embed_dim"]),
                mlp_ratio=float(vision.get("mlp_ratio", 4.0)))


def patch_grid(image_size: Sequence[int], patch_size: int, stride: int) -> Tuple[int, int]:
    """Patch grid (h, w) of an (H, W) image: ``h = (H - p) // s + 1``, ``w = (W - p) // s + 1``."""
    height, width = int(image_size[0]), int(image_size[1])
    if height < patch_size or width < patch_size or stride <= 0:
        raise ValueError(f"Image size {height}x{width} with patch {patch_size} and stride {stride} gives no patch; "
                         "check INPUT.SIZE_TRAIN / INPUT.SIZE_TEST and MODEL.STRIDE_SIZE.")
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic")


def resize_positional_embedding(positional: Tensor, new_grid: Sequence[int],
                                old_grid: Optional[Sequence[int]] = None, mode: str = "bilinear") -> Tensor:
    """Resize a ViT positional embedding to another patch grid, keeping the class position.

    positional (1 + h0*w0, D), any float dtype -> (1 + h*w, D) float32. ``old_grid`` defaults to
    the square grid implied by the token count. ``mode`` "bilinear" (the authors') or "bicubic",
    in fp32 (fp16 archives are cast first: interpolation on fp16 loses precision and bicubic is not
    implemented on every device).
    """
    if mode not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"MODEL.POS_EMBED_INTERP must be one of {list(POS_EMBED_INTERPOLATIONS)}, got {mode!r}")
    positional = positional.detach().float()
    if positional.dim() == 3 and positional.shape[0] == 1:  # timm layout (1, 1+L, D)
        positional = positional[0]
    count, dim = positional.shape
    if old_grid is None:
        side = math.isqrt(count - 1)
        if side * side != count - 1:
            raise ValueError(f"Positional embedding with {count - 1} patch positions is not a square grid; "
                             "pass old_grid=(h, w).")
        old_grid = (side, side)
    old_h, old_w = int(old_grid[0]), int(old_grid[1])
    new_h, new_w = int(new_grid[0]), int(new_grid[1])
    if old_h * old_w != count - 1:
        raise ValueError(f"Positional embedding has {count - 1} patch positions, not {old_h}x{old_w}.")
    class_position, patch_positions = positional[:1], positional[1:]
    if (old_h, old_w) == (new_h, new_w):
        return positional.clone()
    grid = patch_positions.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_h, new_w), mode=mode, align_corners=False)
    patch_positions = grid.permute(0, 2, 3, 1).reshape(new_h * new_w, dim)
    return torch.cat([class_position, patch_positions], dim=0)


# ----------------------------------------------------------------------------- weight files
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageKind:
    """What a pickled ``torch.XStorage`` global stands for: the element dtype of a storage."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _ScriptObjectStub:
    """Stand-in for a pickled TorchScript object (module, submodule): keeps its attribute state
    and runs none of the archive's code."""

    script_type = "?"

    def __setstate__(self, state):
        self.__dict__["attributes"] = state


def _rebuild_tensor(storage: Tensor, storage_offset: int, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None) -> Tensor:
    """A tensor view of a storage (the role of ``torch._utils._rebuild_tensor_v2``)."""
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data: Tensor, requires_grad=False, backward_hooks=None, *extra) -> Tensor:
    return data


def _identity(value, *unused):
    return value


class _TorchScriptTensorUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` allowing only tensor rebuilding and plain containers.

    TorchScript pickles modules as objects of ``__torch__.*`` classes whose state is a dict of
    attributes (submodules, parameters, buffers, flags); tensors refer to storages stored as
    separate archive entries ``<root>/data/<key>`` through persistent ids
    ``('storage', torch.XStorage, key, location, numel)``.
    """

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "restore_type_tag"): _identity,
        ("torch.jit._pickle", "build_intlist"): _identity,
        ("torch.jit._pickle", "build_doublelist"): _identity,
        ("torch.jit._pickle", "build_boollist"): _identity,
        ("torch.jit._pickle", "build_tensorlist"): _identity,
    }

    def __init__(self, file, archive: zipfile.ZipFile, root: str, path: str):
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._path = path
        self._storages: Dict[str, Tensor] = {}
        self._stub_types: Dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            qualified = f"{module}.{name}"
            if qualified not in self._stub_types:
                self._stub_types[qualified] = type(name, (_ScriptObjectStub,), {"script_type": qualified})
            return self._stub_types[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(_STORAGE_DTYPES[name])
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"{self._path}: the TorchScript archive refers to {module}.{name}, which the safe reader does not "
            "allow. Convert the weights to a plain state dict (torch.save(model.state_dict())) or safetensors.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._path}: unexpected persistent id {pid!r} in the TorchScript archive.")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageKind):
            raise pickle.UnpicklingError(f"{self._path}: storage {key} has an unknown element type {kind!r}.")
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._root}data/{key}"))
            storage = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            if storage.numel() != numel:
                raise pickle.UnpicklingError(f"{self._path}: storage {key} holds {storage.numel()} elements, "
                                             f"the archive says {numel}; the file is damaged.")
            self._storages[key] = storage
        return self._storages[key]


def is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript zip (``<root>/data.pkl`` next to ``<root>/code/`` or ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    roots = {n[: -len("data.pkl")] for n in names if n.endswith("data.pkl") and n.count("/") == 1}
    return any(n.startswith(f"{r}code/") or n == f"{r}constants.pkl" for r in roots for n in names)


def read_torchscript_state_dict(path: str) -> Dict[str, Tensor]:
    """The parameters and buffers of a TorchScript archive (e.g. OpenAI's ``ViT-B-16.pt``), as a
    state dict with dotted names (``visual.conv1.weight``), without executing the archive.

    ``torch.jit.load(...).state_dict()`` would give the same dict but runs the archive's code,
    and ``torch.load(weights_only=True)`` refuses TorchScript archives; hence a restricted
    unpickler that rebuilds only tensors and walks the module attribute tree.
    """
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <root>/data.pkl in the TorchScript archive, found {pickles}.")
        root = pickles[0][: -len("data.pkl")]
        if f"{root}byteorder" in names and archive.read(f"{root}byteorder").strip() not in (b"little", b""):
            raise ValueError(f"{path}: big-endian TorchScript archives are not supported.")
        with archive.open(pickles[0]) as handle:
            top = _TorchScriptTensorUnpickler(handle, archive, root, path).load()
    state: Dict[str, Tensor] = {}
    pending = [("", top)]
    while pending:  # iterative walk over the module tree: attribute path -> tensor
        prefix, obj = pending.pop()
        attributes = getattr(obj, "attributes", None)
        if not isinstance(attributes, dict):
            continue
        for name, value in attributes.items():
            if isinstance(value, Tensor):
                state[prefix + name] = value
            elif isinstance(value, _ScriptObjectStub):
                pending.append((f"{prefix}{name}.", value))
    if not state:
        raise ValueError(f"{path}: the TorchScript archive holds no tensors.")
    return state


def read_weight_file(path: str) -> Dict[str, Tensor]:
    """All tensors of a weight file: TorchScript archive, ``.safetensors`` or a torch state dict
    (``torch.load(weights_only=True)``; ``{"state_dict": ...}`` / ``{"model": ...}`` unwrapped)."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"Weight file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if is_torchscript_archive(path):
        return read_torchscript_state_dict(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the message of torch's unpickler says which global it refused
        raise ValueError(f"{path}: cannot read it as a state dict with torch.load(weights_only=True): {exc}") from exc
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors.")
    return dict(loaded)


def _timm_to_open_clip(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a timm CLIP ViT state dict (``patch_embed.proj``, ``blocks.N``, ``head``) to open_clip's
    image-tower names (``conv1``, ``transformer.resblocks.N``, ``proj``)."""
    renames = [
        ("patch_embed.proj.", "conv1."), ("norm_pre.", "ln_pre."), ("blocks.", "transformer.resblocks."),
        (".norm1.", ".ln_1."), (".norm2.", ".ln_2."), (".attn.qkv.weight", ".attn.in_proj_weight"),
        (".attn.qkv.bias", ".attn.in_proj_bias"), (".attn.proj.", ".attn.out_proj."),
        (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
    ]
    mapped: Dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "cls_token":
            mapped["class_embedding"] = value.reshape(-1)
        elif key == "pos_embed":
            mapped["positional_embedding"] = value.reshape(-1, value.shape[-1])
        elif key == "head.weight":
            mapped["proj"] = value.t()  # timm head is Linear(D -> P): weight (P, D); open_clip proj is (D, P)
        elif key.startswith("norm."):
            mapped["ln_post." + key[len("norm."):]] = value
        else:
            for old, new in renames:
                key = key.replace(old, new) if (old.startswith(".") or key.startswith(old)) else key
            mapped[key] = value
    return mapped


def clip_visual_state_dict(state: Mapping[str, Tensor], source: str = "state dict") -> Dict[str, Tensor]:
    """The image-tower part of a CLIP state dict, under open_clip ``VisionTransformer`` names,
    floating tensors cast to fp32. Accepts OpenAI / open_clip full-model names (``visual.*``),
    bare tower names, ``module.`` / ``backbone.`` prefixes and timm CLIP ViT names."""
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("visual.trunk.") for k in state):
        raise ValueError(f"{source}: an open_clip timm-tower checkpoint (visual.trunk.*); this backbone needs a "
                         "plain CLIP ViT (OpenAI or open_clip ViT-B-16 / ViT-L-14 weights).")
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    elif any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    elif "patch_embed.proj.weight" in state:
        state = _timm_to_open_clip(state)
    if "conv1.weight" not in state:
        raise ValueError(f"{source}: does not look like CLIP ViT image-tower weights (no conv1.weight, "
                         "visual.conv1.weight or patch_embed.proj.weight).")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _hf_hub_reachable(host: str = "huggingface.co", port: int = 443, timeout_s: float = 0.8) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout_s`` (DNS included): a bounded
    probe so that an offline machine fails at once instead of after the hub client's retries."""
    opened = threading.Event()

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                opened.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    return opened.wait(timeout_s)


def _offline_requested() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _what_to_get(name: str) -> str:
    """A sentence naming the weight file to fetch for a named tower."""
    if name in TINY_CONFIGS:
        return f"{name} is a built-in test tower without pretrained weights; leave MODEL.PRETRAIN_PATH empty"
    try:
        from open_clip.pretrained import get_pretrained_cfg

        openai = get_pretrained_cfg(name, "openai")
    except Exception:  # an unknown name: say what is generally needed
        openai = {}
    if openai.get("url"):
        return (f"Get the OpenAI CLIP archive {os.path.basename(openai['url'])} from {openai['url']}"
                + (f" (or the open_clip weights from https://huggingface.co/{openai['hf_hub'].rstrip('/')})"
                   if openai.get("hf_hub") else ""))
    return f"Get CLIP weights for {name} (an open_clip state dict, .safetensors or OpenAI .pt archive)"


def resolve_pretrained_tag(name: str, tag: str) -> str:
    """Local path of open_clip's pretrained weights ``name``/``tag``: the hub cache when present,
    else a download when the machine is online. Offline (HF_HUB_OFFLINE or no connection within a
    second) without a cached copy fails at once with a message naming the file to get."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        raise ValueError(f"MODEL.PRETRAIN_TAG {tag!r} is not an open_clip tag of {name}; "
                         f"known tags: {list_pretrained_tags_by_model(name)}")
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # "org/repo/" names the repository (default file names), "org/repo/file.bin" one file in it
        repo_id, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
        candidates = [filename] if filename else []
        candidates += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for candidate in candidates:
            cached = try_to_load_from_cache(repo_id, candidate)
            if isinstance(cached, str) and os.path.isfile(cached):
                return cached
    if cfg.get("url"):
        cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(cached):
            return cached
    host = "huggingface.co" if hub else cfg.get("url", "").split("/")[2]
    if _offline_requested() or not _hf_hub_reachable(host):
        raise PretrainedWeightsError(
            f"MODEL.PRETRAIN_TAG {tag!r} needs a download of the {name} weights and this machine is offline. "
            f"{_what_to_get(name)}, put it under pretrained/ and set MODEL.PRETRAIN_PATH to it.")
    return download_pretrained(cfg)


def pretrained_weights_path(name: str, pretrain_path: str = "", pretrain_tag: str = "") -> Optional[str]:
    """The weight file to load, ``None`` for random init; fails at once (no network wait) when the
    named file is missing."""
    if pretrain_path:
        if os.path.isfile(pretrain_path):
            return pretrain_path
        full = os.path.abspath(pretrain_path)
        raise PretrainedWeightsError(
            f"Pretrained CLIP weights not found: MODEL.PRETRAIN_PATH={pretrain_path!r} ({full}). "
            f"{_what_to_get(name)} and put it at {full}, or set MODEL.PRETRAIN_PATH to where the file is "
            "(or, on a machine with internet access, clear it and set MODEL.PRETRAIN_TAG openai).")
    if pretrain_tag:
        if name in TINY_CONFIGS:
            raise ValueError(f"MODEL.PRETRAIN_TAG is set but {name} is a built-in tower without pretrained weights.")
        return resolve_pretrained_tag(name, pretrain_tag)
    return None


# ----------------------------------------------------------------------------- the tower
class CLIPBackbone(nn.Module):
    """CLIP ViT image tower returning all tokens, with SIE and a non-square patch grid.

    Parameter names follow open_clip's ``VisionTransformer`` (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N``, ``ln_post``, ``proj``) plus
    ``sie_camera`` (num_cameras, D) and ``sie_view`` (num_views, D) when enabled.
    """

    def __init__(self, name: str = "ViT-B-16", image_size: Sequence[int] = (256, 128), stride: int = 0,
                 num_cameras: int = 0, num_views: int = 0, sie_coe: float = 1.0,
                 freeze_patch_embed: bool = True, quick_gelu: bool = True,
                 pretrain_path: str = "", pretrain_tag: str = "", pos_embed_interp: str = "bilinear"):
        """Build with random weights, then load ``pretrain_path`` (or the open_clip ``pretrain_tag``).

        num_cameras / num_views: size of the SIE tables (0 = no camera / view embedding).
        pos_embed_interp: how the pretrained square positional embedding is resized to the patch grid.
        """
        super().__init__()
        if pos_embed_interp not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(f"MODEL.POS_EMBED_INTERP must be one of {list(POS_EMBED_INTERPOLATIONS)}, "
                             f"got {pos_embed_interp!r}")
        self.pos_embed_interp = pos_embed_interp
        # Resolve the weight file first so that a missing file fails before any heavy work.
        weights_path = pretrained_weights_path(name, pretrain_path, pretrain_tag)

        from open_clip.transformer import LayerNorm, QuickGELU, VisionTransformer

        arch = vision_config(name)
        self.name = name
        self.width: int = arch["width"]
        self.proj_dim: int = arch["proj_dim"]
        self.patch_size: int = arch["patch_size"]
        self.stride: int = int(stride) or self.patch_size
        self.image_size: Tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        self.grid_size: Tuple[int, int] = patch_grid(self.image_size, self.patch_size, self.stride)
        self.num_layers: int = arch["layers"]
        self.sie_coe = float(sie_coe)

        # open_clip's tower sized so that its positional embedding has one row per patch of our grid
        # (it derives the grid as image // patch); the stride is set on conv1 afterwards.
        tower = VisionTransformer(
            image_size=(self.grid_size[0] * self.patch_size, self.grid_size[1] * self.patch_size),
            patch_size=self.patch_size, width=self.width, layers=arch["layers"], heads=arch["heads"],
            mlp_ratio=arch["mlp_ratio"], output_dim=self.proj_dim,
            act_layer=QuickGELU if quick_gelu else nn.GELU, norm_layer=LayerNorm)
        tower.conv1.stride = (self.stride, self.stride)
        self.conv1 = tower.conv1
        self.class_embedding = tower.class_embedding
        self.positional_embedding = tower.positional_embedding
        self.ln_pre = tower.ln_pre
        self.transformer = tower.transformer  # open_clip blocks: nn.MultiheadAttention -> SDPA kernels
        self.ln_post = tower.ln_post
        self.proj = tower.proj

        self.sie_camera = nn.Parameter(torch.empty(num_cameras, self.width)) if num_cameras > 0 else None
        self.sie_view = nn.Parameter(torch.empty(num_views, self.width)) if num_views > 0 else None
        for table in (self.sie_camera, self.sie_view):
            if table is not None:
                # truncated at two standard deviations (torch's default bounds are +-2 absolute)
                nn.init.trunc_normal_(table, std=0.02, a=-0.04, b=0.04)

        self.loaded_from: Optional[str] = None
        if weights_path is not None:
            self.load_clip_weights(read_weight_file(weights_path), source=weights_path)
            if is_torchscript_archive(weights_path) and not quick_gelu:
                logger.warning("%s is an OpenAI CLIP archive (trained with QuickGELU) but MODEL.QUICK_GELU is "
                               "False: features will be off; set MODEL.QUICK_GELU True.", weights_path)
            if pretrain_tag and not pretrain_path:
                from open_clip.pretrained import get_pretrained_cfg

                tag_quick_gelu = bool(get_pretrained_cfg(name, pretrain_tag).get("quick_gelu", False))
                if tag_quick_gelu != quick_gelu:
                    logger.warning("open_clip weights %s/%s were trained with %s but MODEL.QUICK_GELU is %s; set "
                                   "MODEL.QUICK_GELU %s.", name, pretrain_tag,
                                   "QuickGELU" if tag_quick_gelu else "GELU", quick_gelu, tag_quick_gelu)
        else:
            logger.warning("Backbone %s: no pretrained weights (MODEL.PRETRAIN_PATH and MODEL.PRETRAIN_TAG empty); "
                           "random init, for tests and size reports only.", name)

        if freeze_patch_embed:
            for param_name, param in self.named_parameters():
                if param_name.startswith(FROZEN_PARAMETER_PREFIXES):
                    param.requires_grad_(False)

    def load_clip_weights(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load CLIP image-tower weights (any naming ``clip_visual_state_dict`` accepts); the square
        positional embedding is resized to this tower's grid. Raises on missing or mis-shaped tensors."""
        visual = clip_visual_state_dict(state, source)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(NEW_PARAMETER_NAMES)}
        positional = visual.get("positional_embedding")
        if positional is not None:
            positional = positional.reshape(-1, positional.shape[-1])
            count = positional.shape[0] - 1
            side = math.isqrt(count)
            if side * side == count and (side, side) != self.grid_size:
                visual["positional_embedding"] = resize_positional_embedding(positional, self.grid_size, (side, side),
                                                                                mode=self.pos_embed_interp)
                logger.info("%s: positional embedding resized from %dx%d to %dx%d patches", source, side, side,
                            *self.grid_size)
            elif count != self.grid_size[0] * self.grid_size[1]:
                raise ValueError(f"{source}: positional embedding has {count} patch positions, neither a square grid "
                                 f"nor this tower's {self.grid_size[0]}x{self.grid_size[1]}.")
        missing = sorted(set(own) - set(visual))
        unexpected = sorted(set(visual) - set(own))
        mismatched = [f"{k}: file {tuple(visual[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in own if k in visual and visual[k].shape != own[k].shape]
        if missing or mismatched:
            raise ValueError(f"{source} does not fit backbone {self.name} (width {self.width}, patch "
                             f"{self.patch_size}, {self.num_layers} layers): missing {missing[:6]}"
                             f"{' ...' if len(missing) > 6 else ''}, shape mismatch {mismatched[:4]}. "
                             "Is MODEL.BACKBONE the architecture of these weights?")
        if unexpected:
            logger.warning("%s: ignoring %d image-tower tensors this backbone does not have: %s", source,
                           len(unexpected), unexpected[:8])
        self.load_state_dict({k: visual[k] for k in own}, strict=False)
        self.loaded_from = source
        logger.info("Backbone %s: loaded %d tensors from %s", self.name, len(own), source)

    def _positional_for_grid(self, grid: Tuple[int, int]) -> Tensor:
        """(1 + h*w, D) positional embedding for a patch grid; resized on the fly (differentiably)
        when a test size differs from the size the tower was built for."""
        if grid == self.grid_size:
            return self.positional_embedding
        class_position, patches = self.positional_embedding[:1], self.positional_embedding[1:]
        patches = patches.reshape(1, *self.grid_size, self.width).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=grid, mode=self.pos_embed_interp, align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], self.width)
        return torch.cat([class_position.float(), patches], dim=0).to(self.positional_embedding.dtype)

    def forward(self, images: Tensor, camids: Optional[Tensor] = None,
                views: Optional[Tensor] = None, side_info: bool = True) -> Tuple[Tensor, Tensor]:
        """images (N, 3, H, W); camids (N,) long (needed when the camera SIE is on); views (N,) long or None
        -> tokens (N, 1+L, D) after ln_post, projected (N, 1+L, P); token 0 is the class token.

        ``side_info`` False: no SIE embedding at all, whatever camids / views say (the authors' memory
        rebuild encodes clips that way)."""
        if not side_info:
            camids = views = None
        elif self.sie_camera is not None and camids is None:
            raise ValueError("CLIPBackbone: camids are required when the camera SIE is on (MODEL.SIE_CAMERA).")
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (N, D, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (N, L, D)
        batch = x.shape[0]
        class_token = self.class_embedding.view(1, 1, -1).expand(batch, 1, -1)
        if self.sie_camera is not None and camids is not None:
            class_token = class_token + self.sie_coe * self.sie_camera[camids].unsqueeze(1)
        if self.sie_view is not None and views is not None:
            class_token = class_token + self.sie_coe * self.sie_view[views].unsqueeze(1)
        x = torch.cat([class_token.to(x.dtype), x], dim=1)
        x = x + self._positional_for_grid(grid).to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        tokens = self.ln_post(x)
        projected = tokens @ self.proj.to(tokens.dtype)
        return tokens, projected


def build_backbone(cfg, num_cameras: int, num_views: int = 2) -> CLIPBackbone:
    """The backbone of a config: MODEL.BACKBONE at INPUT.SIZE_TRAIN, MODEL.STRIDE_SIZE, SIE per
    MODEL.SIE_CAMERA / MODEL.SIE_VIEW (tables of num_cameras / num_views rows), weights per
    MODEL.PRETRAIN_PATH / MODEL.PRETRAIN_TAG."""
    model = cfg.MODEL
    return CLIPBackbone(
        name=model.BACKBONE, image_size=tuple(cfg.INPUT.SIZE_TRAIN), stride=model.STRIDE_SIZE,
        num_cameras=num_cameras if model.SIE_CAMERA else 0, num_views=num_views if model.SIE_VIEW else 0,
        sie_coe=model.SIE_COE, freeze_patch_embed=model.FREEZE_PATCH_EMBED, quick_gelu=model.QUICK_GELU,
        pretrain_path=model.PRETRAIN_PATH, pretrain_tag=model.PRETRAIN_TAG, pos_embed_interp=model.POS_EMBED_INTERP)
