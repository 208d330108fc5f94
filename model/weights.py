"""CLIP weight files: finding them and reading them into open_clip image-tower names.

Pretrained weights come from ``MODEL.PRETRAIN_PATH`` (an OpenAI TorchScript archive, an open_clip /
timm state dict, or a ``.safetensors`` file) or, on an online machine, from an open_clip pretrained
tag (``MODEL.PRETRAIN_TAG``). OpenAI archives are read without executing the archive: a restricted
unpickler rebuilds only the tensors (see ``read_torchscript_state_dict``).

A missing file fails at once (no network wait, nothing built) with a ``PretrainedWeightsError`` that
says what to get and where to put it (the SMPL and PRSD files of ``model.smpl`` and ``model.prsd``
raise the same error). Only torch is imported here; open_clip, safetensors and huggingface_hub are
imported when a function needs them.

The tower that these weights are loaded into (``model.backbone.CLIPBackbone``) resizes the
positional embedding and checks the shapes; this module only reads and renames tensors.
"""
from __future__ import annotations

import collections
import os
import pickle
import socket
import threading
import zipfile
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor


class PretrainedWeightsError(FileNotFoundError):
    """Pretrained weights were asked for but cannot be found (the message says what to get)."""


# ----------------------------------------------------------------------------- TorchScript archives
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


# ----------------------------------------------------------------------------- weight files and tensor names
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


# ----------------------------------------------------------------------------- which file: a path or a hub tag
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


def _what_to_get(name: str, builtin_tower: bool = False) -> str:
    """A sentence naming the weight file to fetch for a named tower (``builtin_tower``: see
    ``pretrained_weights_path``)."""
    if builtin_tower:
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


def pretrained_weights_path(name: str, pretrain_path: str = "", pretrain_tag: str = "", *,
                            builtin_tower: bool) -> Optional[str]:
    """The weight file to load, ``None`` for random init; fails at once (no network wait) when the
    named file is missing.

    builtin_tower: ``name`` is one of the tiny test towers (``model.backbone.TINY_CONFIGS``), for
    which no pretrained weights exist; the caller says so because the towers are defined next to
    the module that imports this one.
    """
    if pretrain_path:
        if os.path.isfile(pretrain_path):
            return pretrain_path
        full = os.path.abspath(pretrain_path)
        raise PretrainedWeightsError(
            f"Pretrained CLIP weights not found: MODEL.PRETRAIN_PATH={pretrain_path!r} ({full}). "
            f"{_what_to_get(name, builtin_tower)} and put it at {full}, or set MODEL.PRETRAIN_PATH to where the "
            "file is (or, on a machine with internet access, clear it and set MODEL.PRETRAIN_TAG openai).")
    if pretrain_tag:
        if builtin_tower:
            raise ValueError(f"MODEL.PRETRAIN_TAG is set but {name} is a built-in tower without pretrained weights.")
        return resolve_pretrained_tag(name, pretrain_tag)
    return None
