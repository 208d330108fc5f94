"""Logging setup (console + text file on rank 0) and a metrics writer (JSON lines + TensorBoard)."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Mapping

ROOT_LOGGER = ""


def setup_logging(output_dir: str | None, rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    """Rank 0 logs INFO to the console and to ``output_dir/filename``; other ranks log warnings only."""
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_sas_handler", False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    console._sas_handler = True  # type: ignore[attr-defined]
    logger.addHandler(console)
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename), encoding="utf-8")
        file_handler.setFormatter(fmt)
        file_handler._sas_handler = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)
    return logger


class MetricsWriter:
    """Scalars to ``metrics.jsonl`` (one JSON object per record) and TensorBoard events; rank 0 only."""

    def __init__(self, output_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is in requirements; keep training if it is absent
                logging.getLogger(__name__).warning("tensorboard not installed: no TensorBoard events")
            else:
                self._tb = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))

    def write(self, kind: str, step: int, epoch: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch, **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"{kind}/{key}", float(value), step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
