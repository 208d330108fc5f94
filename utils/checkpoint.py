"""Checkpoint I/O: atomic writes with a checksum, ``weights_only`` loads, resume discovery and strict
model loading.

File format: what ``torch.save`` writes (a zip archive), followed by a small checksum trailer::

    payload | CRC-32 of each chunk of the payload (uint32 LE, n of them) | footer (32 bytes)
    footer = payload_bytes (uint64) | chunk_bytes (uint64) | n (uint32) | CRC-32 of the CRCs and the
             preceding footer fields (uint32) | b"SASCKSUM"

torch's zip reader finds its central directory from the end of the file and tolerates up to 64 KiB
after it, so ``torch.load(path, weights_only=True)`` reads such a file unchanged; the trailer stays
under 5 KiB (at most MAX_CHUNKS chunks). The checksum is for corruption (flipped bits, a bad copy),
not for safety: ``weights_only`` already refuses code. CRC-32 runs at memory speed per core and the
chunks are checked in parallel threads (zlib releases the GIL), so verifying a multi-GB checkpoint
costs a fraction of a second on a many-core machine (``bench/checkpoint_checksum.py``).
"""
from __future__ import annotations

import glob
import logging
import mmap
import os
import random
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from utils.fileio import RecordingWriter, atomic_write, remove_stale_temp_files

logger = logging.getLogger(__name__)

LAST_NAME = "checkpoint_last.pth"
BEST_NAME = "checkpoint_best.pth"
EPOCH_PATTERN = re.compile(r"checkpoint_epoch(\d+)\.pth$")

CHECKSUM_MAGIC = b"SASCKSUM"
_FOOTER = struct.Struct("<QQII8s")      # payload bytes, chunk bytes, chunk count, CRC of the trailer, magic
CHUNK_BYTES = 64 * 2**20                # checksum granularity (a mismatch is located to a chunk)
MAX_CHUNKS = 1024                       # larger files get larger chunks: the trailer stays small
# torch's own files are never shorter: below this a file is truncated or not a checkpoint at all.
MIN_CHECKPOINT_BYTES = 64


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says which and why."""


def _chunk_crcs(path: str, length: int, chunk: int) -> list[int]:
    """CRC-32 of each ``chunk``-byte piece of the first ``length`` bytes of ``path``, in parallel."""
    if length == 0:
        return []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            starts = range(0, length, chunk)
            workers = min(len(starts), os.cpu_count() or 1, 16)
            crc = lambda start: zlib.crc32(view[start:min(start + chunk, length)])  # noqa: E731
            if workers <= 1:
                return [crc(start) for start in starts]
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(crc, starts))
        finally:
            view.release()


def _chunk_size(length: int) -> int:
    return max(CHUNK_BYTES, -(-length // MAX_CHUNKS))


def append_checksum(path: str) -> None:
    """Append the checksum trailer (see the module docstring) to the torch file at ``path``."""
    length = os.path.getsize(path)
    chunk = _chunk_size(length)
    crcs = _chunk_crcs(path, length, chunk)
    table = struct.pack(f"<{len(crcs)}I", *crcs)
    head = struct.pack("<QQI", length, chunk, len(crcs))
    footer = _FOOTER.pack(length, chunk, len(crcs), zlib.crc32(table + head), CHECKSUM_MAGIC)
    with RecordingWriter(path, "ab") as f:
        f.write(table + footer)


def verify_checksum(path: str) -> bool:
    """Check ``path`` against its checksum trailer. True when it matches, False when the file has no
    trailer (written before checksums existed); CheckpointError ("corrupt") when it does not match."""
    size = os.path.getsize(path)
    if size < _FOOTER.size:
        return False
    with open(path, "rb") as f:
        f.seek(size - _FOOTER.size)
        length, chunk, count, trailer_crc, magic = _FOOTER.unpack(f.read(_FOOTER.size))
        if magic != CHECKSUM_MAGIC:
            return False
        table_bytes = 4 * count
        if count > MAX_CHUNKS or length + table_bytes + _FOOTER.size != size:
            raise CheckpointError(f"Checkpoint {path} is corrupt or truncated: its checksum trailer does not fit "
                                  f"its size ({size} bytes). Use an earlier checkpoint.")
        f.seek(length)
        table = f.read(table_bytes)
    if zlib.crc32(table + struct.pack("<QQI", length, chunk, count)) != trailer_crc or chunk < 1 \
            or count != -(-length // chunk):
        raise CheckpointError(f"Checkpoint {path} is corrupt: its checksum record is damaged. Use an earlier checkpoint.")
    expected = struct.unpack(f"<{count}I", table)
    for index, (got, want) in enumerate(zip(_chunk_crcs(path, length, chunk), expected)):
        if got != want:
            start = index * chunk
            raise CheckpointError(
                f"Checkpoint {path} is corrupt: checksum mismatch in bytes {start}..{min(start + chunk, length) - 1} "
                f"of {length}; the file changed after it was written (disk or copy error). Use an earlier "
                f"checkpoint (--resume auto picks the newest good one).")
    return True


def save_checkpoint(state: dict, path: str) -> None:
    """torch.save + checksum trailer, written atomically (a failed write is a WriteFailure naming ``path``)."""
    def write(tmp: str) -> None:
        with RecordingWriter(tmp) as f:
            torch.save(state, f)
        append_checksum(tmp)

    atomic_write(path, write)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Verify the checksum, then ``torch.load(weights_only=True)`` (refuses pickled code).

    A damaged file raises CheckpointError: "corrupt" when the checksum does not match, "truncated or
    not a checkpoint" when torch cannot read it. A file without a checksum (older versions) loads with
    a warning.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size < MIN_CHECKPOINT_BYTES:
        raise CheckpointError(f"Cannot read checkpoint {path}: it is {size} bytes long, truncated or not a checkpoint")
    verified = verify_checksum(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged or unsafe files
        text = str(exc)
        # Refused code names a global it may not import; anything else (an unknown pickle opcode,
        # a missing zip directory) means the bytes are not a checkpoint, or no longer one.
        if "GLOBAL" in text or "Unsupported global" in text or "Unsupported class" in text:
            raise CheckpointError(
                f"Refused to load {path}: it holds pickled objects other than tensors and plain containers "
                "(possibly code). Only checkpoints written by this project can be loaded."
            ) from exc
        raise CheckpointError(f"Cannot read checkpoint {path} (truncated or not a checkpoint): "
                              f"{type(exc).__name__}: {_torch_reason(text)}") from exc
    if not verified:
        logger.warning("Checkpoint %s has no checksum (written by an older version): loaded without an "
                       "integrity check", path)
    return state


def _torch_reason(text: str) -> str:
    """The cause in a torch.load error, without torch's advice to re-run with ``weights_only=False``
    (which would run any code in the file: this project never loads that way)."""
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Check the documentation of torch.load", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and "Weights only load failed" not in line]
    return lines[0] if lines else "not a file torch.load can read"


def load_train_checkpoint(path: str) -> dict:
    """:func:`load_checkpoint` of a file train.py wrote: CheckpointError unless it holds the stored
    config, the model weights and the meta record."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"config", "model", "meta"} <= set(state):
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no stored config, model and meta)")
    return state


def epoch_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``checkpoint_epoch<N>.pth`` files in ``output_dir`` as (epoch, path), newest first."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoint_epoch*.pth")):
        match = EPOCH_PATTERN.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def find_resume_checkpoint(output_dir: str) -> tuple[str, dict] | None:
    """The newest loadable checkpoint in ``output_dir`` (last, then epoch files newest first).

    A damaged candidate is skipped with a warning that names it, so a kill during a write never
    costs more than the epochs since the previous good file. Reading stops at the first good file:
    holding every epoch checkpoint of a long run in memory at once could exhaust it. Temporary
    files of killed writes are removed (``utils.fileio.remove_stale_temp_files``).
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
