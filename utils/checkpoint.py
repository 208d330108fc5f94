"""Checkpoint I/O: atomic writes, ``weights_only`` loads, resume discovery and strict model loading."""
from __future__ import annotations

import glob
import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch

from utils.fileio import make_temp_file

logger = logging.getLogger(__name__)

LAST_NAME = "checkpoint_last.pth"
BEST_NAME = "checkpoint_best.pth"
EPOCH_PATTERN = re.compile(r"checkpoint_epoch(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says which and why."""


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``: a crash never leaves a half file there."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = make_temp_file(folder, "." + os.path.basename(path) + ".", ".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def save_checkpoint(state: dict, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True`` (refuses pickled code); a damaged file raises CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged or unsafe files
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
            raise CheckpointError(
                f"Refused to load {path}: it holds pickled objects other than tensors and plain containers "
                "(possibly code). Only checkpoints written by this project can be loaded."
            ) from exc
        raise CheckpointError(f"Cannot read checkpoint {path} (truncated or corrupt?): {type(exc).__name__}: {exc}") from exc


def epoch_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``checkpoint_epoch<N>.pth`` files in ``output_dir`` as (epoch, path), newest first."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoint_epoch*.pth")):
        match = EPOCH_PATTERN.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def remove_stale_temp_files(output_dir: str) -> list[str]:
    """Delete the ``.checkpoint*.pth.*.tmp`` files that writers killed mid-write left in ``output_dir``.

    Each is as large as a checkpoint, so a run killed again and again would fill the disk. Only
    for the start of a resumed run, when nothing else writes checkpoints there.
    """
    removed = []
    for path in glob.glob(os.path.join(output_dir, ".checkpoint*.pth.*.tmp")):
        try:
            size = os.path.getsize(path)
            os.remove(path)
        except FileNotFoundError:  # another rank of the same resumed run removed it first
            continue
        removed.append(path)
        logger.warning("Removed %s (%.1f MiB), the temporary file of a checkpoint write that was killed",
                       path, size / 2**20)
    return removed


def find_resume_checkpoint(output_dir: str) -> tuple[str, dict] | None:
    """The newest loadable checkpoint in ``output_dir`` (last, then epoch files newest first).

    A damaged candidate is skipped with a warning that names it, so a kill during a write never
    costs more than the epochs since the previous good file. Reading stops at the first good file:
    holding every epoch checkpoint of a long run in memory at once could exhaust it. Temporary
    files of killed writes are removed (remove_stale_temp_files).
    """
    remove_stale_temp_files(output_dir)
    candidates = [os.path.join(output_dir, LAST_NAME)] + [p for _, p in epoch_checkpoints(output_dir)]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            logger.warning("Skipping damaged checkpoint for resume: %s", exc)
            continue
        if path != candidates[0]:
            logger.warning("Resuming from %s (epoch %s) instead of %s", path, state.get("epoch"), candidates[0])
        return path, state
    return None


def load_model_state(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strict load: on any missing, unexpected or differently shaped tensor, load nothing and say which."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"Checkpoint {source} does not fit this model (nothing was loaded)."]
        if mismatched:
            lines.append(f"  {len(mismatched)} tensors differ in shape, first: " + "; ".join(mismatched[:5]))
        if missing:
            lines.append(f"  {len(missing)} tensors missing from the checkpoint, first: " + ", ".join(missing[:5]))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected tensors, first: " + ", ".join(unexpected[:5]))
        lines.append("  Was it trained with another config (backbone, class count, enabled modules)?")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from, as tensors and plain lists (``weights_only`` safe)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[-1], tuple(python[:-1]), state["python_gauss"]))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
         state["numpy_gauss"][0], state["numpy_gauss"][1])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
