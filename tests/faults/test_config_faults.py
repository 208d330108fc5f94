"""Faults in config files and command-line overrides, through load_config and the train.py CLI.

Row: unknown config key; YAML ``_BASE_`` cycle; wrong value type -> error naming the key / file.
"""
import os

import pytest

from configs import ConfigError, load_config
from tests.helpers.cli import assert_clean_failure, run_cli
from tests.helpers.paths import DEMO_CONFIG


def _write(folder, name, text) -> str:
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    _write(folder, "b.yml", "_BASE_: a.yml\n")  # a.yml -> b.yml -> a.yml
    return {
        "unknown key": (_write(folder, "unknown.yml", f"_BASE_: {DEMO_CONFIG}\nSOLVER:\n  MAX_EPOCH: 3\n"),
                        ["SOLVER.MAX_EPOCH", "unknown.yml", "Did you mean SOLVER.MAX_EPOCHS"]),
        "_BASE_ cycle": (_write(folder, "a.yml", "_BASE_: b.yml\nSOLVER:\n  MAX_EPOCHS: 3\n"),
                         ["_BASE_ cycle", "a.yml", "b.yml"]),
        "wrong type": (_write(folder, "wrong_type.yml", "SOLVER:\n  MAX_EPOCHS: many\n"),
                       ["SOLVER.MAX_EPOCHS", "wrong_type.yml", "many"]),
        "null value": (_write(folder, "null.yml", "MODEL:\n  DEVICE: null\n"),
                       ["MODEL.DEVICE", "null.yml"]),
        "list of the wrong type": (_write(folder, "steps.yml", "SOLVER:\n  STEPS: [ten, twenty]\n"),
                                   ["SOLVER.STEPS", "steps.yml"]),
        "group given a value": (_write(folder, "group.yml", "MODEL: 3\n"), ["MODEL", "group.yml"]),
    }


@pytest.mark.parametrize("fault", ["unknown key", "_BASE_ cycle", "wrong type", "null value",
                                   "list of the wrong type", "group given a value"])
def test_bad_config_file_is_an_error_naming_key_and_file(bad_configs, fault):
    path, needles = bad_configs[fault]
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for needle in needles:
        assert needle in str(caught.value)


@pytest.mark.parametrize("opts, needles", [
    (["SOLVER.MAX_EPOCH", "3"], ["SOLVER.MAX_EPOCH", "command line"]),
    (["SOLVER.MAX_EPOCHS", "many"], ["SOLVER.MAX_EPOCHS", "many"]),
    (["SOLVER.STEPS", "[ten]"], ["SOLVER.STEPS", "ten"]),
    (["SOLVER.MAX_EPOCHS"], ["KEY VALUE"]),
], ids=["unknown key", "wrong type", "list of the wrong type", "odd count"])
def test_bad_override_is_an_error_naming_the_key(opts, needles):
    with pytest.raises(ConfigError) as caught:
        load_config(DEMO_CONFIG, opts)
    for needle in needles:
        assert needle in str(caught.value)


def test_numbers_written_naturally_are_accepted(tmp_path):
    """1 for a float key and 1e-3 (read by YAML as a string) are numbers, in a file or on the command line."""
    path = _write(tmp_path, "ints.yml", f"_BASE_: {DEMO_CONFIG}\nSOLVER:\n  BASE_LR: 1\nLOSS:\n  ID_WEIGHT: 2\n"
                                        "INPUT:\n  PIXEL_MEAN: [0, 0.5, 1e-3]\n")
    cfg = load_config(path, ["LOSS.TRIPLET_WEIGHT", "3", "INPUT.PIXEL_STD", "[1, 1e-1, 2]"])
    assert isinstance(cfg.SOLVER.BASE_LR, float) and cfg.SOLVER.BASE_LR == 1.0
    assert isinstance(cfg.LOSS.ID_WEIGHT, float) and isinstance(cfg.LOSS.TRIPLET_WEIGHT, float)
    assert list(cfg.INPUT.PIXEL_MEAN) == [0.0, 0.5, 0.001] and list(cfg.INPUT.PIXEL_STD) == [1.0, 0.1, 2.0]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["unknown key", "_BASE_ cycle", "wrong type"])
def test_train_cli_exits_with_the_message_and_no_traceback(bad_configs, tmp_path, fault):
    path, needles = bad_configs[fault]
    out_dir = str(tmp_path / "out")
    proc = run_cli("train.py", "--config_file", path, "OUTPUT_DIR", out_dir)
    assert_clean_failure(proc, "error: ", *needles)
    assert not os.path.exists(out_dir)  # nothing was started


@pytest.mark.slow
def test_train_cli_bad_override_exits_with_the_message(tmp_path):
    proc = run_cli("train.py", "--config_file", DEMO_CONFIG, "SOLVER.MAX_EPOCHS", "many", "OUTPUT_DIR", str(tmp_path))
    assert_clean_failure(proc, "error: ", "SOLVER.MAX_EPOCHS", "many")
