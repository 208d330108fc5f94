"""What every command line of the project shares: ``--flags`` anywhere among ``KEY VALUE`` overrides,
and errors that already explain themselves printed as one message instead of a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

# Errors whose message already names the file or key and the fix: the command line shows the message
# alone (a traceback would bury it). Looked up in sys.modules: a class never imported was never raised.
EXPLAINED_ERRORS = (
    ("configs", "ConfigError"),
    ("datasets.detreidx", "DatasetLayoutError"), ("datasets.video", "CorruptFrameError"),
    ("model.backbone", "PretrainedWeightsError"), ("utils.checkpoint", "CheckpointError"),
    ("processor.trainer", "NonFiniteLossError"), ("processor.trainer", "RunFolderError"),
    ("utils.fileio", "WriteFailure"), ("utils.metrics", "NonFiniteFeaturesError"),
)
# Exit status of a run stopped by Ctrl-C / SIGTERM (128 + SIGINT, as shells report it).
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


def run_main(main: Callable[[], object]) -> None:
    """Run a command line's ``main``: explained errors exit non-zero with their message alone."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - anything unexplained is re-raised with its traceback
        if not is_explained_error(exc):
            raise
        prefix = "Config error" if type(exc).__name__ == "ConfigError" else "error"
        sys.exit(f"{prefix}: {exc}")
