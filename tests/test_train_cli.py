"""``python train.py`` end to end on tiny synthetic data (in-process ``train.main`` and real subprocesses):
resume equivalence, the non-finite stop, DDP under torchrun, the demo outputs, CUDA-graph step marks, and the
researcher workflow (issue 11): run folders, options anywhere, the weights named, data roots, Ctrl-C / SIGTERM.

The workflow tests share one tiny run (the trained_run fixture, trained once per session by ``train.py`` in a
subprocess); tests that change a run work on a copy.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from processor.trainer import NonFiniteLossError
from tests.helpers.cli import CLI_ENV, assert_clean_failure, assert_ok, output_of, run_cli
from tests.helpers.files import snapshot
from tests.helpers.paths import DEMO_CONFIG, REPO_ROOT
from tests.helpers.training import make_tiny_opts
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow   # every test here runs the command end to end


def model_weights(output_dir):
    return load_checkpoint(os.path.join(output_dir, "checkpoint_last.pth"))["model"]


def test_a_resumed_run_still_reports_its_best_epochs_validation(train_data_root, tmp_path):
    run = str(tmp_path / "run")
    first = train.main(["--config_file", DEMO_CONFIG,
                        *make_tiny_opts(train_data_root, run, epochs=1, **{"SOLVER.EVAL_PERIOD": "1"})])
    assert first["best_epoch"] == 1 and first["final_val"] is not None
    # No validation after the resume: the final weights are checkpoint_best (epoch 1), whose summary
    # must come from the checkpoint.
    resumed = train.main(["--config_file", DEMO_CONFIG, "--resume", "auto",
                          *make_tiny_opts(train_data_root, run, epochs=2)])
    assert resumed["final_weights"]["epoch"] == 1
    assert resumed["final_val"] is not None and resumed["final_val"]["mAP-3"] == pytest.approx(first["final_val"]["mAP-3"])


def test_resume_gives_the_same_weights_as_a_straight_run(train_data_root, tmp_path):
    straight = str(tmp_path / "straight")
    train.main(["--config_file", DEMO_CONFIG] + make_tiny_opts(train_data_root, straight, epochs=2))
    split = str(tmp_path / "split")
    train.main(["--config_file", DEMO_CONFIG] + make_tiny_opts(train_data_root, split, epochs=1))
    assert load_checkpoint(os.path.join(split, "checkpoint_last.pth"))["epoch"] == 1
    train.main(["--config_file", DEMO_CONFIG, "--resume", "auto"] + make_tiny_opts(train_data_root, split, epochs=2))
    a, b = model_weights(straight), model_weights(split)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any("memory" in key for key in a), "the memory must be saved in the checkpoint"
    for name in ("config.yaml", "checkpoint_epoch1.pth", "checkpoint_epoch2.pth", "metrics.jsonl", "log.txt"):
        assert os.path.isfile(os.path.join(straight, name)), name
    records = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    # One record per epoch (its means, learning rates and clips/s); step windows under their own kind.
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all("loss" in r and "lr" in r and "clips_per_s" in r for r in epochs)
    assert {r["kind"] for r in records} <= {"epoch", "window", "val"}
    assert os.path.isdir(os.path.join(straight, "tensorboard"))


def test_non_finite_loss_stops_with_step_and_term(train_data_root, tmp_path, monkeypatch):
    import processor.trainer as trainer_module

    real_build_loss = trainer_module.build_loss
    calls = {"n": 0}

    def poisoned_build_loss(cfg, num_classes, device=None):
        loss_fn = real_build_loss(cfg, num_classes, device)

        def wrapped(outputs, labels):
            total, terms = loss_fn(outputs, labels)
            calls["n"] += 1
            if calls["n"] == steps_per_epoch + 2:  # second step of epoch 2
                name = next(iter(terms))
                terms = dict(terms, **{name: terms[name] * float("nan")})
                total = total + terms[name]
            return total, terms

        return wrapped

    steps_per_epoch = _steps_per_epoch(train_data_root)
    monkeypatch.setattr(trainer_module, "build_loss", poisoned_build_loss)
    out = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 .*term\(s\): \w+"):
        train.main(["--config_file", DEMO_CONFIG] + make_tiny_opts(train_data_root, out, epochs=3))
    state = load_checkpoint(os.path.join(out, "checkpoint_last.pth"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _steps_per_epoch(data_root):
    from configs import load_config
    from datasets.build import build_dataset, build_train_loader

    cfg = load_config(DEMO_CONFIG, make_tiny_opts(data_root, "unused"))
    return len(build_train_loader(cfg, build_dataset(cfg)))


def test_torchrun_two_processes_gloo(train_data_root, tmp_path):
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO_ROOT, "tests", "children", "ddp_worker.py"), out, "--config_file", DEMO_CONFIG,
           *make_tiny_opts(train_data_root, out, epochs=1)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = [json.load(open(os.path.join(out, f"seen_rank{r}.json"))) for r in range(2)]
    steps = [len(s["batches"]) for s in seen]
    assert steps[0] == steps[1] == seen[0]["promised_steps"]
    idx0 = [i for b in seen[0]["batches"] for i in b]
    idx1 = [i for b in seen[1]["batches"] for i in b]
    # Each rank trains on its own share of the epoch's batches: no batch appears on both ranks.
    batches0 = {tuple(sorted(b)) for b in seen[0]["batches"]}
    batches1 = {tuple(sorted(b)) for b in seen[1]["batches"]}
    assert batches0 and not batches0 & batches1
    assert len(idx0) == len(idx1) == steps[0] * 4  # IMS_PER_BATCH 8 split over 2 ranks
    assert os.path.isfile(os.path.join(out, "checkpoint_last.pth"))
    assert not os.path.exists(os.path.join(out, "log_rank1.txt"))


def test_demo_config_end_to_end_writes_csv(train_data_root, tmp_path):
    out = str(tmp_path / "demo")
    opts = make_tiny_opts(train_data_root, out, epochs=1,
                          **{"SOLVER.EVAL_PERIOD": "1", "TEST.EVAL_AFTER_TRAINING": "True"})
    report = train.main(["--config_file", DEMO_CONFIG] + opts)
    assert report["val_mAP_before"] is not None and report["val_mAP_after"] is not None
    assert os.path.isfile(os.path.join(out, "submission.csv"))
    assert os.path.isfile(os.path.join(out, "checkpoint_best.pth"))
    assert report["test"]["metrics_available"]
    assert set(report["test"]["cases"]) == {1, 2, 3}


def test_cuda_graph_runs_mark_every_forward_as_a_new_step(train_data_root, tmp_path, monkeypatch):
    """Under MODEL.COMPILE_MODE reduce-overhead (CUDA graphs, whose outputs the next replay overwrites)
    every forward, training step or eval batch, starts with cudagraph_mark_step_begin()."""
    import processor.trainer as trainer_module

    marks = {"pending": False, "forwards": 0, "unmarked": 0}

    def mark():
        marks["pending"] = True

    def check_marked(module, args):
        marks["forwards"] += 1
        marks["unmarked"] += not marks["pending"]
        marks["pending"] = False

    build = trainer_module.build_model

    def build_cuda_graph_model(*args, **kwargs):
        model = build(*args, **kwargs)
        model.cuda_graph_steps = True  # what compile_regions sets for reduce-overhead (CPU: no graphs)
        model.register_forward_pre_hook(check_marked)
        return model

    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", mark)
    monkeypatch.setattr(trainer_module, "build_model", build_cuda_graph_model)
    train.main(["--config_file", DEMO_CONFIG,
                *make_tiny_opts(train_data_root, str(tmp_path / "run"), epochs=1, **{"SOLVER.EVAL_PERIOD": "1"})])
    assert marks["forwards"] > 0 and marks["unmarked"] == 0


def test_gradient_accumulation_under_cuda_graphs_is_refused_in_one_line(tmp_path):
    """CUDA graphs (reduce-overhead) reuse the memory of gradients accumulated across micro-steps."""
    from configs import ConfigError, load_config
    from processor.trainer import check_training_settings

    opts = ["MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", "reduce-overhead", "SOLVER.ACCUM_STEPS", "2"]
    with pytest.raises(ConfigError, match="SOLVER.ACCUM_STEPS 2 cannot be used with MODEL.COMPILE_MODE reduce-overhead"):
        check_training_settings(load_config(None, opts))
    check_training_settings(load_config(None, opts[:-1] + ["1"]))
    check_training_settings(load_config(None, ["MODEL.COMPILE", "True", "SOLVER.ACCUM_STEPS", "2"]))
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train.py"), "--config_file", DEMO_CONFIG, *opts,
                             "OUTPUT_DIR", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "SOLVER.ACCUM_STEPS 2 cannot be used" in result.stderr


def copy_run(trained_run, tmp_path):
    copy = str(tmp_path / "run_copy")
    shutil.copytree(trained_run[1], copy)
    return copy


def opts_for(trained_run, output_dir, **extra):
    """The overrides of a 2-epoch run on trained_run's data into ``output_dir``."""
    data_root = trained_run[0]
    return make_tiny_opts(data_root, output_dir, epochs=2,
                          **{"SOLVER.EVAL_PERIOD": "1", "SOLVER.LOG_PERIOD": "100", **extra})


# ----------------------------------------------------------------------------- run folders
def test_fresh_run_into_a_run_folder_stops_and_overwrite_clears_it(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    before = snapshot(run)
    refused = run_cli("train.py", "--config_file", DEMO_CONFIG, *opts_for(trained_run, run))
    assert_clean_failure(refused, "already holds a training run", "--resume auto", "--overwrite", "OUTPUT_DIR")
    assert snapshot(run) == before, "a refused run must not touch the folder"

    stale = os.path.join(run, "checkpoint_epoch60.pth")
    shutil.copy(os.path.join(run, "checkpoint_last.pth"), stale)
    # --overwrite after the KEY VALUE pairs (options are recognised anywhere)
    proc = run_cli("train.py", "--config_file", DEMO_CONFIG, *opts_for(trained_run, run, **{"SOLVER.MAX_EPOCHS": "1"}),
                   "--overwrite")
    assert_ok(proc)
    assert not os.path.exists(stale), "--overwrite must clear the previous run's checkpoints"
    log = open(os.path.join(run, "log.txt")).read()
    assert log.count("resolved config in") == 1, "log.txt holds two runs"
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert max(r["epoch"] for r in records) == 1 and sum(r["kind"] == "epoch" for r in records) == 1
    assert len(os.listdir(os.path.join(run, "tensorboard"))) == 1, "TensorBoard events of two runs"


# ----------------------------------------------------------------------------- options anywhere
def test_options_after_overrides_and_unknown_options(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    resumed = run_cli("train.py", "--config_file", DEMO_CONFIG,
                      *opts_for(trained_run, run, **{"TEST.FINAL_WEIGHTS": "last"}),
                      "--resume", "auto")
    assert_ok(resumed)
    assert "Resumed from" in output_of(resumed)
    assert "the last weights (epoch 2; TEST.FINAL_WEIGHTS last)" in output_of(resumed)

    stray = run_cli("train.py", "--config_file", DEMO_CONFIG, "OUTPUT_DIR", str(tmp_path / "x"), "--resum", "auto")
    text = assert_clean_failure(stray, "unknown option --resum")
    assert "Unknown config key" not in text and not os.path.exists(tmp_path / "x")

    ckpt = os.path.join(trained_run[1], "checkpoint_best.pth")
    stray_eval = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "TEST.SEQ_LEN", "4", "--cvs", "a.csv")
    text = assert_clean_failure(stray_eval, "unknown option --cvs")
    assert "Unknown config key" not in text
    yaml_path = run_cli("evaluate_all_cases.py", "--model_path", os.path.join(trained_run[1], "config.yaml"))
    assert_clean_failure(yaml_path, "not a checkpoint", "--config_file")


# ----------------------------------------------------------------------------- the weights named
def test_training_names_the_best_weights_and_uses_them_for_the_test_csv(trained_run):
    _, run, out, _ = trained_run
    log = open(os.path.join(run, "log.txt")).read()
    assert "new best (epoch 1, val mAP-3" in log
    assert "Final evaluation with checkpoint_best.pth (epoch" in out
    results = json.load(open(os.path.join(run, "test_results.json")))
    assert results["checkpoint"] == os.path.join(run, "checkpoint_best.pth")

    best = torch.load(os.path.join(run, "checkpoint_best.pth"), map_location="cpu", weights_only=True)
    assert results["epoch"] == best["epoch"] and results["rules"] == {"junk": "tracklet", "ap": "trapezoid"}
    assert os.path.isfile(os.path.join(run, "submission.csv"))
    # quiet: the resolved config is in config.yaml, one line points at it
    assert "resolved config in" in out and "(--verbose prints it)" in out and "\nMODEL:\n" not in out
    assert "\n  BACKBONE:" not in out


# ----------------------------------------------------------------------------- data roots
def test_a_mistyped_root_is_an_error_and_never_generated(trained_run, tmp_path):
    typo = tmp_path / "dataa" / "xfd"
    train_proc = run_cli("train.py", "--config_file", DEMO_CONFIG, "DATASETS.ROOT_DIR", str(typo),
                         "OUTPUT_DIR", str(tmp_path / "out"))
    assert_clean_failure(train_proc, str(typo), f"nearest existing folder: {tmp_path}")
    assert not typo.exists()
    ckpt = os.path.join(trained_run[1], "checkpoint_best.pth")  # its stored config has SYNTHETIC_IF_MISSING True
    eval_proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "DATASETS.ROOT_DIR", str(typo),
                        "--eval_dir", str(tmp_path / "eval"))
    assert_clean_failure(eval_proc, str(typo), "nearest existing folder")
    assert not typo.exists()


# ----------------------------------------------------------------------------- interrupts
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_a_checkpoint_and_says_how_to_resume(trained_run, tmp_path, signum):
    out = str(tmp_path / "interrupted")
    cmd = [sys.executable, "train.py", "--config_file", DEMO_CONFIG,
           *make_tiny_opts(trained_run[0], out, epochs=200,
                           **{"SOLVER.LOG_PERIOD": "100", "SOLVER.CHECKPOINT_PERIOD": "100"})]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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

    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] >= 1
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")], "a temporary checkpoint file was left"


# ----------------------------------------------------------------------------- after review
def test_epoch_line_shows_that_epochs_learning_rate_and_one_line_per_epoch(trained_run, tmp_path):
    # BASE_LR 1e-3 after one warm-up epoch at factor 0.1, no step before epoch 5: epoch 1 trains at
    # 1e-4, epoch 2 at 1e-3 (the line must not show the rate the scheduler moved on to).
    proc = run_cli("train.py", "--config_file", DEMO_CONFIG,
                   *opts_for(trained_run, str(tmp_path / "run"), **{"SOLVER.STEPS": "[5]", "SOLVER.EVAL_PERIOD": "0"}))
    assert_ok(proc)
    text = output_of(proc)
    epoch_lines = [line for line in text.splitlines() if " done in " in line and "epoch " in line]
    assert len(epoch_lines) == 2, text[-3000:]
    assert "lr base 1.0e-04" in epoch_lines[0] and "lr base 1.0e-03" in epoch_lines[1], epoch_lines
    assert "Memory rebuilt" not in text   # log.txt only: one console line per epoch


def test_a_failed_start_does_not_block_the_corrected_retry(trained_run, tmp_path):
    from processor.run_folder import check_run_folder

    run = str(tmp_path / "run")
    missing_root = str(tmp_path / "typo_root")
    failed = run_cli("train.py", "--config_file", DEMO_CONFIG,
                     *make_tiny_opts(missing_root, run, epochs=1, **{"DATASETS.SYNTHETIC_IF_MISSING": "False"}))
    assert_clean_failure(failed, missing_root)
    leftovers = check_run_folder(run, resume="", overwrite=False)   # no RunFolderError
    assert {os.path.basename(p) for p in leftovers} <= {"config.yaml", "log.txt", "metrics.jsonl", "tensorboard"}
