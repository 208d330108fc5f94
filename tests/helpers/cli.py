"""Shared helpers of the fault-injection suite: fast training overrides, frame damage, CLI runs."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from tests.training_utils import DEMO, ROOT, tiny_opts

__all__ = ["DEMO", "ROOT", "fast_opts", "damage_frame", "FRAME_DAMAGE", "run_cli", "assert_clean_failure", "sha256"]

# 64x32 frames give a 4x2 patch grid on tiny-vit-16: an epoch of the tiny run takes a fraction of a second.
FAST_SIZE = {"INPUT.SIZE_TRAIN": "[64, 32]", "INPUT.SIZE_TEST": "[64, 32]"}

# How a frame file gets damaged: emptied, cut in half (no end-of-image marker), header overwritten.
FRAME_DAMAGE = ("zero-byte", "truncated", "corrupt-header")


def fast_opts(data_root: str, output_dir: str, epochs: int = 1, **extra: str) -> list[str]:
    """tiny_opts with small frames (training and CLI runs of a few seconds on 2 cores)."""
    return tiny_opts(data_root, output_dir, epochs, **{**FAST_SIZE, **extra})


def damage_frame(path: str, kind: str) -> None:
    """Damage a JPEG in place the way copies and disks do."""
    with open(path, "rb") as f:
        data = f.read()
    if kind == "zero-byte":
        data = b""
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "corrupt-header":
        data = data[:2] + bytes(300) + data[302:]
    else:
        raise ValueError(kind)
    with open(path, "wb") as f:
        f.write(data)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repository root, offline; stdout and stderr captured as text."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with a message (every needle in it) and without a Python traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in the output:\n{out[-4000:]}"
    return out


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
