"""Runtime behaviour of the command lines and the training loop (issues 20.4-5 and 21.1, 21.5): the
time-left estimate, the free-space check, a bad test frame at the final evaluation, error lines and
their log, progress bars in redirected logs, checkpoint errors, data-root checks before anything is
written or built, and ``--config_file`` keys in evaluation."""
import csv
import io
import json
import logging
import os
import pickle
import sys

import pytest

from tests.datasets_fixtures import make_tiny_root, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- the time left
def test_run_clock_estimates_epochs_validations_and_the_final_evaluation():
    from processor.trainer import RunClock

    now = [100.0]
    clock = RunClock(10, lambda e: e % 5 == 0 or e == 10, final_tracklets=200, clock=lambda: now[0])
    now[0] = 130.0
    clock.epoch_done(20.0)
    assert clock.describe(1) == ("elapsed 0:00:30, about 0:03:00 left + validation and the final evaluation")
    clock.validation_done(6.0, 60)      # 0.1 s per tracklet
    clock.epoch_done(10.0)              # mean epoch 15 s
    # after epoch 2: 8 epochs x 15 s + validations at 5 and 10 x 6 s + 200 x 0.1 s = 152 s
    assert clock.describe(2) == "elapsed 0:00:30, about 0:02:32 left"
    assert clock.seconds_left(10)[0] == pytest.approx(6.0 + 20.0)


# ----------------------------------------------------------------------------- disk space
@pytest.fixture
def tiny_trainer(tmp_path):
    import torch

    from processor.trainer import Trainer

    root = make_tiny_root(tmp_path)

    def build(*opts):
        cfg = tiny_cfg(root, "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]", "OUTPUT_DIR",
                       str(tmp_path / "run"), "SOLVER.MAX_EPOCHS", "10",
                       "SOLVER.CHECKPOINT_PERIOD", "5", *opts)
        return Trainer(cfg, torch.device("cpu"), cfg.OUTPUT_DIR)
    return build


def test_free_space_check_warns_when_the_checkpoints_will_not_fit(tiny_trainer, monkeypatch, caplog):
    import shutil
    from collections import namedtuple

    trainer = tiny_trainer()
    size = trainer.checkpoint_bytes()
    model_bytes = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())
    assert size > 2 * model_bytes    # Adam's two moments are counted before they exist
    planned = trainer.planned_checkpoints()   # last + epoch5 + epoch10 (no validation split)
    assert [(e, os.path.basename(p)) for e, p in planned] == [
        (1, "checkpoint_last.pth"), (5, "checkpoint_epoch5.pth"), (10, "checkpoint_epoch10.pth")]
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * size, 0, int(2.5 * size)))
    caplog.set_level(logging.WARNING)
    assert trainer.check_free_space()
    message = caplog.records[-1].getMessage()
    assert "Low disk space" in message and "3 more checkpoint files" in message and "about epoch 5" in message
    assert "SOLVER.CHECKPOINT_PERIOD (now 5)" in message
    # Room for the three files but not for the temporary copy a write needs besides them: still a warning.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * size, 0, int(3.5 * size)))
    assert trainer.check_free_space()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * size, 0, 4 * size))
    assert not trainer.check_free_space()
    trainer.close()


# ----------------------------------------------------------------------------- a bad test frame
def _damage(path, kind):
    if kind == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    else:
        open(path, "wb").write(b"not a jpeg at all")


def test_a_bad_test_frame_does_not_cost_the_run(tiny_trainer, tmp_path):
    """An unreadable frame is replaced by a neighbour and named; a tracklet with no readable frame is
    left out of the CSV and named; the submission is written; the messages are in log.txt."""
    from utils.logger import setup_logging

    trainer = tiny_trainer()
    setup_logging(trainer.output_dir)
    cases = trainer.dataset.cases
    everywhere = [t for split in cases.values() for t in (*split.query, *split.gallery)]
    dead = cases[1].query[0]
    dead_copies = sorted({t.folder for t in everywhere if (t.pid, t.name) == (dead.pid, dead.name)})
    for folder in dead_copies:   # every copy (a tracklet may sit in two case folders): no frame readable
        for name in os.listdir(folder):
            _damage(os.path.join(folder, name), "garbage")
    damaged = next(t for t in cases[3].gallery if (t.pid, t.name) != (dead.pid, dead.name) and len(t.frames) > 1)
    for copy in [t for t in everywhere if (t.pid, t.name) == (damaged.pid, damaged.name)]:
        for frame in list(copy.frames)[:-1]:   # only its last frame reads
            _damage(frame, "truncated")
    summary = trainer.evaluate_test({"checkpoint": "x.pth", "epoch": 10})
    for handler in logging.getLogger().handlers:
        handler.flush()
    log = open(os.path.join(trainer.output_dir, "log.txt")).read()
    skipped = [line for line in log.splitlines() if "Skipping unreadable frame" in line
               and os.sep + damaged.name + os.sep in line]
    assert skipped, "the replaced frame must be named in log.txt"
    assert f"leaving out {len(dead_copies)} tracklet(s) without one readable frame" in log
    assert all(folder in log for folder in dead_copies)
    rows = list(csv.reader(open(os.path.join(trainer.output_dir, "submission.csv"))))
    names = {cell for row in rows for cell in row}
    assert dead.name not in names and damaged.name in names
    assert json.load(open(os.path.join(trainer.output_dir, "test_results.json")))["left_out_tracklets"] == dead_copies
    assert summary["left_out_tracklets"] == dead_copies
    trainer.close()


# ----------------------------------------------------------------------------- error lines and the log
def test_errors_have_one_prefix_and_reach_the_log_file(tmp_path, capsys):
    from configs import ConfigError
    from utils.cli import run_main
    from utils.logger import setup_logging
    from utils.signals import RunInterrupted

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
    import importlib

    from utils.cli import EXPLAINED_ERRORS

    for module, name in EXPLAINED_ERRORS:
        error = getattr(importlib.import_module(module), name, None)
        assert isinstance(error, type) and issubclass(error, Exception), f"{module}.{name}"
        assert error.__module__ == module, f"{module}.{name} is defined in {error.__module__}"


def test_console_logging_uses_the_one_format():
    from utils.logger import LOG_FORMAT, setup_console_logging

    logger = setup_console_logging()
    handlers = [h for h in logger.handlers if getattr(h, "_sas_handler", False)]
    assert handlers and all(h.formatter._fmt == LOG_FORMAT for h in handlers)


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bars_only_on_a_terminal_unless_sas_progress_says(monkeypatch):
    from utils.logger import progress_bar, progress_enabled

    monkeypatch.delenv("SAS_PROGRESS", raising=False)
    assert progress_enabled(_Stream(True)) and not progress_enabled(_Stream(False))
    monkeypatch.setenv("SAS_PROGRESS", "0")
    assert not progress_enabled(_Stream(True))
    monkeypatch.setenv("SAS_PROGRESS", "1")
    assert progress_enabled(_Stream(False))
    monkeypatch.setattr(sys, "stderr", _Stream(False))
    monkeypatch.delenv("SAS_PROGRESS")
    assert progress_bar(range(3), desc="x").disable
    monkeypatch.setenv("SAS_PROGRESS", "1")
    assert not progress_bar(range(3), desc="x").disable
    assert progress_bar(range(3), desc="x", enabled=False).disable   # other ranks never


# ----------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_error_never_passes_on_the_advice_to_load_with_weights_only_false(tmp_path):
    from utils.checkpoint import CheckpointError, load_checkpoint

    path = str(tmp_path / "plain.pkl")
    with open(path, "wb") as f:
        pickle.dump({"state": set(range(50))}, f)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "weights_only" not in message and "Re-running" not in message, message
    assert "Unsupported operand" in message and path in message


# ----------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from tests.inference_fixtures import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_evaluation_checks_the_data_root_before_writing_or_building(tiny_checkpoint, tmp_path, monkeypatch):
    import evaluate_all_cases
    import model.build
    from datasets.detreidx.scan import DatasetLayoutError

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the data root was checked")

    monkeypatch.setattr(model.build, "build_model", no_build)
    eval_dir = str(tmp_path / "runs" / "eval")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        evaluate_all_cases.main(["--model_path", tiny_checkpoint[1], "--eval_dir", eval_dir,
                                 "DATASETS.ROOT_DIR", str(tmp_path / "typo")])
    assert not os.path.exists(tmp_path / "runs"), "a wrong data root must leave no evaluation folder"


def test_config_file_model_keys_are_applied_as_on_the_command_line(tiny_checkpoint, tmp_path):
    import evaluate_all_cases
    from utils.checkpoint import CheckpointError, load_checkpoint

    root, ckpt = tiny_checkpoint
    stored = load_checkpoint(ckpt)["config"]
    harmless = tmp_path / "embed.yml"
    harmless.write_text("MODEL:\n  EMBED_PARTS: [cls, proj]\nSOLVER:\n  MAX_EPOCHS: 99\n")
    cfg, changes, ignored = evaluate_all_cases.resolve_config(stored, str(harmless), [])
    assert list(cfg.MODEL.EMBED_PARTS) == ["cls", "proj"] and cfg.SOLVER.MAX_EPOCHS != 99
    assert [(k, s) for k, _, _, s in changes] == [("MODEL.EMBED_PARTS", f"--config_file {harmless}")]
    assert ignored == ["SOLVER.MAX_EPOCHS"]   # named in the log, not silently dropped
    same, via_opts, _ = evaluate_all_cases.resolve_config(stored, "", ["MODEL.EMBED_PARTS", "[cls, proj]"])
    assert list(same.MODEL.EMBED_PARTS) == ["cls", "proj"] and via_opts[0][3] == "the command line"

    wider = tmp_path / "wider.yml"
    wider.write_text("MODEL:\n  PRSD:\n    FEAT_DIM: 96\n")
    with pytest.raises(CheckpointError) as refused:
        evaluate_all_cases.main(["--model_path", ckpt, "--config_file", str(wider), "--eval_dir",
                                 str(tmp_path / "eval"), "DATASETS.ROOT_DIR", root])
    message = str(refused.value)
    assert "does not fit this model" in message and f"MODEL.PRSD.FEAT_DIM (--config_file {wider})" in message
    assert "to evaluate the model as trained" in message


# ----------------------------------------------------------------------------- CPU threads
def test_auto_cpu_threads_leave_the_loader_workers_their_cores():
    from utils.distributed import auto_cpu_threads

    assert auto_cpu_threads(2, 2) == 1            # the demo on 2 cores: measured 2-4x faster than 2 threads
    assert auto_cpu_threads(2, 0) == 2
    assert auto_cpu_threads(16, 4) == 12
    assert auto_cpu_threads(16, 4, processes=2) == 4   # two ranks on one host share the cores
    assert auto_cpu_threads(2, 8) == 1
    assert auto_cpu_threads(16, 0, default=8) == 8


def test_configure_cpu_threads_follows_the_policy_or_sas_cpu_threads(monkeypatch):
    import torch

    from configs import load_config
    from utils.distributed import configure_cpu_threads

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = load_config(None, ["DATALOADER.NUM_WORKERS", "2"])
    monkeypatch.delenv("SAS_CPU_THREADS", raising=False)
    assert configure_cpu_threads(cfg).startswith("1 intra-op thread: 2 cores - 2 loader workers") and calls == [1]
    monkeypatch.setenv("SAS_CPU_THREADS", "3")
    configure_cpu_threads(cfg)
    assert calls == [1, 3]
    monkeypatch.setenv("SAS_CPU_THREADS", "all")
    assert "torch default" in configure_cpu_threads(cfg) and calls == [1, 3]
    monkeypatch.setenv("SAS_CPU_THREADS", "many")
    with pytest.raises(ValueError, match="SAS_CPU_THREADS"):
        configure_cpu_threads(cfg)
