"""Command lines run as a user runs them: ``python ARGS`` in a fresh process from the repository root."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.paths import REPO_ROOT

# Offline, the repository importable, one intra-op thread (two cores are shared with other processes).
CLI_ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repository root with CLI_ENV; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=CLI_ENV, capture_output=True, text=True,
                          timeout=timeout)


def output_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    """The command succeeded without a Python traceback."""
    assert proc.returncode == 0, output_of(proc)[-5000:]
    assert "Traceback" not in output_of(proc), output_of(proc)[-5000:]


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with a message (every needle in it) and without a Python traceback; -> its output."""
    out = output_of(proc)
    assert proc.returncode != 0, out[-5000:]
    assert "Traceback" not in out, out[-5000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in the output:\n{out[-5000:]}"
    return out
