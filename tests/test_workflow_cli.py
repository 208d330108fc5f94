"""Researcher workflow through the real command lines (issue 11): run folders, options anywhere,
the weights named, data roots, read-only evaluation in its own folder, Ctrl-C / SIGTERM.

One tiny run (2 epochs, validation every epoch, test evaluation at the end) is trained once per
session by ``train.py`` in a subprocess and shared; tests that change a run work on a copy.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.training_utils import DEMO, ROOT, tiny_opts

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def output(proc):
    return proc.stdout + proc.stderr


def assert_ok(proc):
    assert proc.returncode == 0, output(proc)[-5000:]
    assert "Traceback" not in output(proc), output(proc)[-5000:]


def assert_clean_failure(proc, *needles):
    text = output(proc)
    assert proc.returncode != 0, text[-5000:]
    assert "Traceback" not in text, text[-5000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-5000:]}"
    return text


def snapshot(folder, skip=("eval",)):
    """{relative path: (size, mtime_ns)} of every file under ``folder`` outside ``skip``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if os.path.relpath(dirpath, folder) == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            found[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(data root, run folder, train.py output) of one tiny run with a validation split."""
    base = tmp_path_factory.mktemp("workflow")
    data_root, run_dir = str(base / "data" / "xfd"), str(base / "run")
    opts = tiny_opts(data_root, run_dir, epochs=2, **{"SOLVER.EVAL_PERIOD": "1", "TEST.EVAL_AFTER_TRAINING": "True",
                                                       "SOLVER.LOG_PERIOD": "100"})
    proc = run_cli("train.py", "--config_file", DEMO, *opts)
    assert_ok(proc)
    return data_root, run_dir, output(proc), opts


def copy_run(trained, tmp_path):
    copy = str(tmp_path / "run_copy")
    shutil.copytree(trained[1], copy)
    return copy


def opts_for(trained, output_dir, **extra):
    data_root = trained[0]
    return tiny_opts(data_root, output_dir, epochs=2, **{"SOLVER.EVAL_PERIOD": "1", "SOLVER.LOG_PERIOD": "100", **extra})


# ----------------------------------------------------------------------------- 1. run folders
def test_fresh_run_into_a_run_folder_stops_and_overwrite_clears_it(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = snapshot(run)
    refused = run_cli("train.py", "--config_file", DEMO, *opts_for(trained, run))
    assert_clean_failure(refused, "already holds a training run", "--resume auto", "--overwrite", "OUTPUT_DIR")
    assert snapshot(run) == before, "a refused run must not touch the folder"

    stale = os.path.join(run, "checkpoint_epoch60.pth")
    shutil.copy(os.path.join(run, "checkpoint_last.pth"), stale)
    # --overwrite after the KEY VALUE pairs (options are recognised anywhere)
    proc = run_cli("train.py", "--config_file", DEMO, *opts_for(trained, run, **{"SOLVER.MAX_EPOCHS": "1"}),
                   "--overwrite")
    assert_ok(proc)
    assert not os.path.exists(stale), "--overwrite must clear the previous run's checkpoints"
    log = open(os.path.join(run, "log.txt")).read()
    assert log.count("resolved config in") == 1, "log.txt holds two runs"
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert max(r["epoch"] for r in records) == 1 and sum(r["kind"] == "epoch" for r in records) == 1
    assert len(os.listdir(os.path.join(run, "tensorboard"))) == 1, "TensorBoard events of two runs"


# ----------------------------------------------------------------------------- 2. options anywhere
def test_options_after_overrides_and_unknown_options(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    resumed = run_cli("train.py", "--config_file", DEMO, *opts_for(trained, run, **{"TEST.FINAL_WEIGHTS": "last"}),
                      "--resume", "auto")
    assert_ok(resumed)
    assert "Resumed from" in output(resumed)
    assert "the last weights (epoch 2; TEST.FINAL_WEIGHTS last)" in output(resumed)

    stray = run_cli("train.py", "--config_file", DEMO, "OUTPUT_DIR", str(tmp_path / "x"), "--resum", "auto")
    text = assert_clean_failure(stray, "unknown option --resum")
    assert "Unknown config key" not in text and not os.path.exists(tmp_path / "x")

    ckpt = os.path.join(trained[1], "checkpoint_best.pth")
    stray_eval = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "TEST.SEQ_LEN", "4", "--cvs", "a.csv")
    text = assert_clean_failure(stray_eval, "unknown option --cvs")
    assert "Unknown config key" not in text
    yaml_path = run_cli("evaluate_all_cases.py", "--model_path", os.path.join(trained[1], "config.yaml"))
    assert_clean_failure(yaml_path, "not a checkpoint", "--config_file")


# ----------------------------------------------------------------------------- 3. the weights named
def test_training_names_the_best_weights_and_uses_them_for_the_test_csv(trained):
    _, run, out, _ = trained
    log = open(os.path.join(run, "log.txt")).read()
    assert "new best (epoch 1, val mAP-3" in log
    assert "Final evaluation with checkpoint_best.pth (epoch" in out
    results = json.load(open(os.path.join(run, "test_results.json")))
    assert results["checkpoint"] == os.path.join(run, "checkpoint_best.pth")
    import torch

    best = torch.load(os.path.join(run, "checkpoint_best.pth"), map_location="cpu", weights_only=True)
    assert results["epoch"] == best["epoch"] and results["rules"] == {"junk": "tracklet", "ap": "trapezoid"}
    assert os.path.isfile(os.path.join(run, "submission.csv"))
    # quiet: the resolved config is in config.yaml, one line points at it
    assert "resolved config in" in out and "(--verbose prints it)" in out and "\nMODEL:\n" not in out
    assert "\n  BACKBONE:" not in out


def test_evaluation_names_the_checkpoint_and_has_no_random_init_warning(trained):
    _, run, _, _ = trained
    ckpt = os.path.join(run, "checkpoint_best.pth")
    proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt)
    assert_ok(proc)
    text = output(proc)
    assert f"Loaded {ckpt} (epoch " in text and "trained with " in text and "configs/demo.yml" in text
    assert "random init" not in text
    results = json.load(open(os.path.join(run, "eval", "checkpoint_best", "results.json")))
    assert results["checkpoint"] == ckpt and isinstance(results["epoch"], int) and results["rules"]["junk"] == "tracklet"


# ----------------------------------------------------------------------------- 4. data roots
def test_a_mistyped_root_is_an_error_and_never_generated(trained, tmp_path):
    typo = tmp_path / "dataa" / "xfd"
    train_proc = run_cli("train.py", "--config_file", DEMO, "DATASETS.ROOT_DIR", str(typo),
                         "OUTPUT_DIR", str(tmp_path / "out"))
    assert_clean_failure(train_proc, str(typo), f"nearest existing folder: {tmp_path}")
    assert not typo.exists()
    ckpt = os.path.join(trained[1], "checkpoint_best.pth")  # its stored config has SYNTHETIC_IF_MISSING True
    eval_proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "DATASETS.ROOT_DIR", str(typo),
                        "--eval_dir", str(tmp_path / "eval"))
    assert_clean_failure(eval_proc, str(typo), "nearest existing folder")
    assert not typo.exists()


def test_cases_need_only_their_folders_and_layout_errors_have_no_traceback(trained, tmp_path):
    data_root, run, _, _ = trained
    partial = str(tmp_path / "partial")
    shutil.copytree(data_root, partial)
    shutil.rmtree(os.path.join(partial, "case2_ground_to_aerial"))
    ckpt = os.path.join(run, "checkpoint_best.pth")
    proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--cases", "1,3", "DATASETS.ROOT_DIR", partial,
                   "--eval_dir", str(tmp_path / "e13"))
    assert_ok(proc)
    assert sorted(json.load(open(tmp_path / "e13" / "results.json"))["cases"]) == ["1", "3"]
    missing = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--cases", "2", "DATASETS.ROOT_DIR", partial,
                      "--eval_dir", str(tmp_path / "e2"))
    assert_clean_failure(missing, os.path.join(partial, "case2_ground_to_aerial"))
    shutil.rmtree(os.path.join(partial, "case3_aerial_to_aerial", "query"))
    broken = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--cases", "1,3", "DATASETS.ROOT_DIR", partial,
                     "--eval_dir", str(tmp_path / "e3"))
    assert_clean_failure(broken, "case3_aerial_to_aerial")


# ----------------------------------------------------------------------------- 5. evaluation is read-only
def test_evaluation_writes_only_its_own_folder_and_reports_changed_keys(trained, tmp_path):
    _, run, _, _ = trained
    before = snapshot(run)
    ckpt = os.path.join(run, "checkpoint_last.pth")
    csv_path = str(tmp_path / "mine.csv")
    proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--config_file", DEMO, *_data_opts(trained),
                   "TEST.SEQ_LEN", "2", "--visualize", "1", "--csv", csv_path)
    assert_ok(proc)
    text = output(proc)
    assert "TEST.SEQ_LEN: 4 -> 2 (the command line)" in text
    assert "DATALOADER.NUM_WORKERS: 0 -> 2 (--config_file" in text  # demo.yml's value against the stored one
    assert snapshot(run) == before, "evaluation changed the training folder"
    eval_dir = os.path.join(run, "eval", "checkpoint_last")
    assert os.path.isfile(csv_path) and not os.path.exists(os.path.join(eval_dir, "submission.csv"))
    for name in ("results.json", "evaluate_log.txt", "per_condition_case1.png", "ranklists_case1"):
        assert os.path.exists(os.path.join(eval_dir, name)), name
    again = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "TEST.RERANK", "True")
    assert_ok(again)
    assert os.path.isfile(os.path.join(run, "eval", "checkpoint_last-rerank", "results.json"))
    assert open(os.path.join(eval_dir, "evaluate_log.txt")).read().count("Loaded ") == 1


def _data_opts(trained):
    """The data keys of the tiny run (the demo file names another root and frame size)."""
    opts = trained[3]
    keep = ("DATASETS.ROOT_DIR", "INPUT.SIZE_TEST", "DATASETS.VAL_IDS")
    return [w for k, v in zip(opts[0::2], opts[1::2]) if k in keep for w in (k, v)]


# ----------------------------------------------------------------------------- 7. interrupts
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_a_checkpoint_and_says_how_to_resume(trained, tmp_path, signum):
    out = str(tmp_path / "interrupted")
    cmd = [sys.executable, "train.py", "--config_file", DEMO,
           *tiny_opts(trained[0], out, epochs=200, **{"SOLVER.LOG_PERIOD": "100", "SOLVER.CHECKPOINT_PERIOD": "100"})]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = os.path.join(out, "checkpoint_last.pth")
    deadline = time.time() + 240
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(last), "no epoch finished"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stdout + stderr, stderr[-5000:]
    message = [line for line in stderr.splitlines() if "resume with:" in line]
    assert len(message) == 1 and "--resume auto" in message[0] and "Interrupted at epoch" in message[0]
    import torch

    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] >= 1
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")], "a temporary checkpoint file was left"


# ----------------------------------------------------------------------------- after review
def test_epoch_line_shows_that_epochs_learning_rate_and_one_line_per_epoch(trained, tmp_path):
    # BASE_LR 1e-3 after one warm-up epoch at factor 0.1, no step before epoch 5: epoch 1 trains at
    # 1e-4, epoch 2 at 1e-3 (the line must not show the rate the scheduler moved on to).
    proc = run_cli("train.py", "--config_file", DEMO, *opts_for(trained, str(tmp_path / "run"),
                                                                **{"SOLVER.STEPS": "[5]", "SOLVER.EVAL_PERIOD": "0"}))
    assert_ok(proc)
    text = output(proc)
    epoch_lines = [line for line in text.splitlines() if " done in " in line and "epoch " in line]
    assert len(epoch_lines) == 2, text[-3000:]
    assert "lr base 1.0e-04" in epoch_lines[0] and "lr base 1.0e-03" in epoch_lines[1], epoch_lines
    assert "Memory rebuilt" not in text   # log.txt only: one console line per epoch


def test_a_failed_start_does_not_block_the_corrected_retry(trained, tmp_path):
    from processor.trainer import check_run_folder

    run = str(tmp_path / "run")
    missing_root = str(tmp_path / "typo_root")
    failed = run_cli("train.py", "--config_file", DEMO,
                     *tiny_opts(missing_root, run, epochs=1, **{"DATASETS.SYNTHETIC_IF_MISSING": "False"}))
    assert_clean_failure(failed, missing_root)
    leftovers = check_run_folder(run, resume="", overwrite=False)   # no RunFolderError
    assert {os.path.basename(p) for p in leftovers} <= {"config.yaml", "log.txt", "metrics.jsonl", "tensorboard"}


# ----------------------------------------------------------------------------- run folders without training
def _files(folder, names):
    os.makedirs(folder, exist_ok=True)
    for name, text in names.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def test_config_log_and_an_empty_metrics_log_alone_are_a_failed_start_not_a_run(tmp_path):
    from processor.trainer import check_run_folder

    run = str(tmp_path / "run")
    _files(run, {"config.yaml": "MODEL: {}\n", "log.txt": "started\n", "metrics.jsonl": "", "notes.md": "mine\n"})
    leftovers = check_run_folder(run, resume="", overwrite=False)    # no RunFolderError
    assert sorted(os.path.basename(p) for p in leftovers) == ["config.yaml", "log.txt", "metrics.jsonl"]


def test_a_run_that_logged_metrics_but_saved_no_checkpoint_is_a_run(tmp_path):
    from processor.trainer import RunFolderError, check_run_folder

    run = str(tmp_path / "run")
    _files(run, {"config.yaml": "MODEL: {}\n", "log.txt": "started\n", "metrics.jsonl": '{"kind": "step"}\n'})
    with pytest.raises(RunFolderError, match="metrics.jsonl"):
        check_run_folder(run, resume="", overwrite=False)
    assert check_run_folder(run, resume="auto", overwrite=False) == []


def test_run_folders_whose_names_hold_glob_characters_are_seen(tmp_path):
    from processor.trainer import RunFolderError, check_run_folder

    run = str(tmp_path / "run[1]*?")
    _files(run, {"checkpoint_last.pth": "x", "log.txt": "started\n"})
    with pytest.raises(RunFolderError, match="checkpoint_last.pth"):
        check_run_folder(run, resume="", overwrite=False)
    assert sorted(os.path.basename(p) for p in check_run_folder(run, resume="", overwrite=True)) == [
        "checkpoint_last.pth", "log.txt"]


def test_every_rank_and_epoch_draws_from_its_own_seed():
    from processor.trainer import epoch_seed

    seeds = {epoch_seed(7, epoch, rank) for epoch in range(4) for rank in range(4)}
    assert len(seeds) == 16
