"""The command-line plumbing of every entry point (utils/cli.py): options recognised before and after the
KEY VALUE overrides, a stray option named as an unknown option (issue 11), errors as one ``error:`` line that
also reaches log.txt, and every explained error class found where utils.cli looks for it."""
import importlib
import logging

import pytest

from configs import ConfigError
from utils.cli import EXPLAINED_ERRORS, make_parser, parse_command_line, run_main
from utils.logger import setup_logging
from utils.signals import RunInterrupted


def parser():
    p = make_parser("test")
    p.add_argument("--resume", default="")
    p.add_argument("--overwrite", action="store_true")
    return p


def test_options_are_recognised_before_and_after_overrides():
    args = parse_command_line(parser(), ["OUTPUT_DIR", "o", "--resume", "auto", "SOLVER.BASE_LR", "-1e-3", "--overwrite"])
    assert args.resume == "auto" and args.overwrite
    assert args.opts == ["OUTPUT_DIR", "o", "SOLVER.BASE_LR", "-1e-3"]


@pytest.mark.parametrize("stray", ["--resum", "--csv", "-x"])
def test_a_stray_option_is_an_unknown_option(stray, capsys):
    with pytest.raises(SystemExit):
        parse_command_line(parser(), ["OUTPUT_DIR", "o", stray, "auto"])
    err = capsys.readouterr().err
    assert f"unknown option {stray}" in err and "Unknown config key" not in err


# ----------------------------------------------------------------------------- error lines and the log
def test_errors_have_one_prefix_and_reach_the_log_file(tmp_path, capsys):
    setup_logging(str(tmp_path))

    def config_error():
        raise ConfigError("Unknown config key X.Y in a.yml")

    with pytest.raises(SystemExit) as exited:
        run_main(config_error)
    assert str(exited.value.code) == "error: Unknown config key X.Y in a.yml"

    def interrupted():
        raise RunInterrupted("Interrupted at epoch 3, step 2: kept; resume with: python train.py --resume auto")

    with pytest.raises(SystemExit) as exited:
        run_main(interrupted)
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip().endswith("resume with: python train.py --resume auto")
    for handler in logging.getLogger().handlers:
        handler.flush()
    log = open(tmp_path / "log.txt").read()
    assert "ERROR: error: Unknown config key X.Y in a.yml" in log
    assert "WARNING: Interrupted at epoch 3, step 2: kept; resume with: python train.py --resume auto" in log
    assert log.count("Unknown config key") == 1


def test_every_explained_error_names_the_module_that_defines_it():
    # is_explained_error looks the classes up by module name: an entry left behind by a move would
    # silently turn that error's one line back into a traceback


    for module, name in EXPLAINED_ERRORS:
        error = getattr(importlib.import_module(module), name, None)
        assert isinstance(error, type) and issubclass(error, Exception), f"{module}.{name}"
        assert error.__module__ == module, f"{module}.{name} is defined in {error.__module__}"
