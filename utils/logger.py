"""Logging setup (console + text file on rank 0), a metrics writer (JSON lines + TensorBoard) and the
progress bars.

Every command line logs in one format (LOG_FORMAT: ``HH:MM:SS name LEVEL: message``):
``setup_logging`` for those with a log file, ``setup_console_logging`` for the others. A log or
metrics file that cannot be written (disk full, read-only, no permission) stops the run with
``utils.fileio.WriteFailure`` (one line naming the file), not with logging's traceback per message
on stderr.

Progress bars (``progress_bar``): ``SAS_PROGRESS=1`` shows them, ``SAS_PROGRESS=0`` hides them;
unset, they show only when stderr is a terminal, so redirected logs (``> run.log 2>&1``, batch jobs)
get no bar updates.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Iterable, Mapping

from utils.fileio import WriteFailure, ensure_folder

ROOT_LOGGER = ""
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"
PROGRESS_ENV = "SAS_PROGRESS"
METRICS_FILE = "metrics.jsonl"   # a run's metrics log, one JSON record per line (MetricsWriter)


class FailingFileHandler(logging.FileHandler):
    """A FileHandler whose failed write raises WriteFailure (once; it then stays silent so that the
    messages logged while the run unwinds do not raise again). logging's default prints a traceback
    to stderr for every message and carries on writing nothing."""

    def __init__(self, filename: str, encoding: str = "utf-8"):
        try:
            super().__init__(filename, encoding=encoding)
        except OSError as exc:
            raise WriteFailure(filename, exc) from None
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.failed = True
            raise WriteFailure(self.baseFilename, error) from None
        super().handleError(record)


def setup_logging(output_dir: str | None, rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    """Rank 0 logs INFO to the console and to ``output_dir/filename``; other ranks log warnings only."""
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_sas_handler", False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    console._sas_handler = True  # type: ignore[attr-defined]
    logger.addHandler(console)
    if output_dir and rank == 0:
        ensure_folder(output_dir)
        file_handler = FailingFileHandler(os.path.join(output_dir, filename))
        file_handler.setFormatter(fmt)
        file_handler._sas_handler = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)
    return logger


class MetricsWriter:
    """Scalars to ``metrics.jsonl`` (one JSON object per record) and TensorBoard events; rank 0 only.

    A record is ``{"kind": kind, "step": global step, "epoch": epoch, name: value, ...}``; TensorBoard
    gets each value as ``<kind>/<name>``. The trainer writes the kinds "epoch" (one per epoch: the
    means over all its steps, the learning rates it trained with, clips/s), "window" (the means over
    the last SOLVER.LOG_PERIOD steps, at each step line of an epoch longer than that) and "val"
    (validation mAP-3).
    """

    def __init__(self, output_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        ensure_folder(output_dir)
        self._jsonl_path = os.path.join(output_dir, METRICS_FILE)
        try:
            self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")
        except OSError as exc:
            raise WriteFailure(self._jsonl_path, exc) from None
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
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as exc:
            raise WriteFailure(self._jsonl_path, exc) from None
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"{kind}/{key}", float(value), step)

    def close(self) -> None:
        if self._jsonl is not None:
            try:
                self._jsonl.close()
            except OSError as exc:
                raise WriteFailure(self._jsonl_path, exc) from None
        if self._tb is not None:
            self._tb.close()


# Loggers whose multi-line INFO records (the dataset statistics table) show one line on the console.
DETAIL_LOGGERS = ("datasets.detreidx.dataset",)


class _ConsoleDetailFormatter(logging.Formatter):
    """Shows only the first line of the multi-line INFO records of DETAIL_LOGGERS (log.txt keeps them whole)."""

    def __init__(self, inner: logging.Formatter, log_path: str):
        super().__init__()
        self.inner, self.log_path = inner, log_path

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        if record.name in DETAIL_LOGGERS and record.levelno == logging.INFO and "\n" in text:
            text = text.split("\n", 1)[0] + f" (table in {self.log_path})"
        return text


def quiet_console(log_path: str) -> None:
    """The console shows the first line of DETAIL_LOGGERS' tables and where the whole table is."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(_ConsoleDetailFormatter(handler.formatter or logging.Formatter(), log_path))


@contextlib.contextmanager
def quieter(names: Iterable[str], level: int = logging.WARNING, enabled: bool = True):
    """Within the block, the loggers ``names`` log only at ``level`` and above (e.g. no dataset table)."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, previous):
            lg.setLevel(old)


def setup_console_logging(level: int = logging.INFO) -> logging.Logger:
    """Console logging in the project's format, for command lines without a log file (search, export)."""
    logger = setup_logging(None, 0)
    logger.setLevel(level)
    return logger


def log_to_files(level: int, message: str, name: str = "utils.cli") -> None:
    """Write one record to the log files only (the console shows it another way: an error line)."""
    root = logging.getLogger(ROOT_LOGGER)
    record = logging.getLogger(name).makeRecord(name, level, "", 0, message, None, None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            try:
                handler.handle(record)
            except WriteFailure:
                pass


def progress_enabled(stream=None) -> bool:
    """Whether progress bars show: SAS_PROGRESS 1/0, else only when ``stream`` (stderr) is a terminal."""
    choice = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if choice in ("1", "on", "true", "yes"):
        return True
    if choice in ("0", "off", "false", "no"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable, desc: str = "", enabled: bool = True, **kwargs):
    """A tqdm bar over ``iterable`` (left off the screen when done), shown when ``enabled`` (rank 0)
    and :func:`progress_enabled`."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=kwargs.pop("leave", False),
                disable=not (enabled and progress_enabled()), **kwargs)
