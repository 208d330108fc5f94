"""What every command line of the project shares: ``--flags`` anywhere among ``KEY VALUE`` overrides,
errors that already explain themselves printed as one ``error: ...`` line instead of a traceback, and
a run stopped by a signal ending with its one line and exit status 130.

Errors and interrupt lines also go to the run's log file(s) when logging writes to one, so
``log.txt`` says how a run ended.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

# Errors whose message already names the file or key and the fix: the command line shows the message
# alone (a traceback would bury it). Looked up in sys.modules: a class never imported was never raised.
EXPLAINED_ERRORS = (
    ("configs", "ConfigError"),
    ("datasets.detreidx.scan", "DatasetLayoutError"), ("datasets.video", "CorruptFrameError"),
    ("model.weights", "PretrainedWeightsError"), ("utils.checkpoint", "CheckpointError"),
    ("processor.trainer", "NonFiniteLossError"), ("processor.run_folder", "RunFolderError"),
    ("utils.fileio", "WriteFailure"), ("utils.metrics", "NonFiniteFeaturesError"),
    ("utils.runlock", "RunLockError"),
)
ERROR_PREFIX = "error: "
# Exit status of a run stopped by Ctrl-C / SIGTERM / SIGUSR1 (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT_CODE = 130


def make_parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose options are never abbreviated (``--res`` is not ``--resume``)."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options anywhere on the line; the other words are ``KEY VALUE`` overrides, in ``args.opts``.

    A word that looks like an option but is not one (``--resum``) is an "unknown option" error with
    the parser's usage, never mistaken for a config key. Values may start with ``-`` (``-1``, ``-0.5``).
    """
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    for position, word in enumerate(rest):
        if word.startswith("--") or (word.startswith("-") and position % 2 == 0 and not _is_number(word)):
            parser.error(f"unknown option {word} (options: {', '.join(_option_names(parser))}; "
                         "the other arguments are KEY VALUE config overrides)")
    args.opts = rest
    return args


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _option_names(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def is_explained_error(exc: BaseException) -> bool:
    classes = [getattr(sys.modules.get(module), name, None) for module, name in EXPLAINED_ERRORS]
    return isinstance(exc, tuple(c for c in classes if c is not None))


def fail(message: str) -> None:
    """Stop a command line with its one ``error: ...`` line (exit status 1), also in the log file."""
    from utils.logger import log_to_files

    log_to_files(logging.ERROR, ERROR_PREFIX + message)
    sys.exit(ERROR_PREFIX + message)


def _stop(message: str) -> None:
    """A run stopped by a signal: its line on stderr (rank 0) and in the log file, exit status 130."""
    from utils.logger import log_to_files

    log_to_files(logging.WARNING, message)
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED_EXIT_CODE)


def _stop_loader_workers() -> None:
    """End the loader workers of a run that ends on an exception (datasets.build.shutdown_loader_workers)."""
    build = sys.modules.get("datasets.build")
    if build is not None and hasattr(build, "shutdown_loader_workers"):
        build.shutdown_loader_workers()


def run_main(main: Callable[[], object]) -> None:
    """Run a command line's ``main``: explained errors exit 1 with their message alone (``error: ...``);
    a run interrupted by a signal (utils.signals.RunInterrupted, Ctrl-C) exits 130 with its one line."""
    from utils.signals import RunInterrupted

    try:
        main()
    except RunInterrupted as exc:
        _stop_loader_workers()
        _stop(str(exc))
    except KeyboardInterrupt as exc:   # a second signal, or Ctrl-C where no step loop runs
        _stop_loader_workers()
        _stop(f"Stopped at once ({exc or 'Ctrl-C'}); files are written atomically, so those written are whole")
    except Exception as exc:  # noqa: BLE001 - anything unexplained is re-raised with its traceback
        _stop_loader_workers()
        if not is_explained_error(exc):
            from utils.logger import log_to_files

            import traceback

            log_to_files(logging.ERROR, ERROR_PREFIX + "".join(traceback.format_exception(exc)).rstrip())
            raise
        fail(str(exc))
