"""The rules of a training run's folder (OUTPUT_DIR): what a run writes there, when a folder holds a
run, and what a fresh start clears first. One run, one OUTPUT_DIR: a fresh run never writes into
another run's folder (``check_run_folder``)."""
from __future__ import annotations

import glob
import os
import shutil

from utils.logger import METRICS_FILE

# What a training run writes into OUTPUT_DIR (evaluations of its checkpoints go to eval/).
# A run is there once it trained (checkpoints, or metrics written); config.yaml, log.txt and an empty
# metrics.jsonl alone are what a start that failed (a wrong data root, a missing weight file) leaves.
RUN_MARKERS = ("checkpoint_*.pth", METRICS_FILE)
FAILED_START_FILES = ("config.yaml", "log.txt", METRICS_FILE, "tensorboard")
RUN_FILES = RUN_MARKERS + FAILED_START_FILES + (".checkpoint*.tmp", "submission.csv", "test_results.json",
                                                "per_condition_case*", "ranklists_case*", "eval")


class RunFolderError(RuntimeError):
    """A fresh run would write into an OUTPUT_DIR that holds another run; the message says what to do."""


def run_files(output_dir: str, patterns=RUN_FILES) -> list[str]:
    """The paths in ``output_dir`` that a training run writes (matching ``patterns``), sorted."""
    return sorted({p for pattern in patterns for p in glob.glob(os.path.join(glob.escape(output_dir), pattern))})


def metrics_written(output_dir: str) -> bool:
    """Whether the folder's metrics log holds a record: a training step ran there (an empty one is what
    a failed start leaves)."""
    path = os.path.join(output_dir, METRICS_FILE)
    return os.path.isfile(path) and os.path.getsize(path) > 0


def check_run_folder(output_dir: str, resume: str, overwrite: bool) -> list[str]:
    """Refuse a fresh run into an OUTPUT_DIR holding a run (RunFolderError) unless ``resume`` or
    ``overwrite``; returns the files to clear first: the run's with ``overwrite``, or what a failed
    start left (config.yaml, log.txt; nothing trained) so two attempts never share a log. Read-only:
    safe on every DDP rank."""
    if resume:
        return []
    found = [p for p in run_files(output_dir, RUN_MARKERS)
             if os.path.basename(p) != METRICS_FILE or metrics_written(output_dir)]
    if not found:
        return run_files(output_dir, FAILED_START_FILES)  # a failed start's files: cleared, not mixed in
    if overwrite:
        return run_files(output_dir)
    shown = ", ".join(os.path.basename(p) for p in found[:4]) + (", ..." if len(found) > 4 else "")
    raise RunFolderError(
        f"OUTPUT_DIR {output_dir} already holds a training run ({shown}). Continue it with --resume auto, "
        f"train into another folder (OUTPUT_DIR other/folder), or add --overwrite to delete that run's files first."
    )


def clear_run_files(paths) -> None:
    """Delete a previous run's (or a failed start's) files and folders (rank 0 only; the caller logs it
    once logging writes to the run's log)."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
