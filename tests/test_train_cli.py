"""End-to-end training on tiny synthetic data: resume equivalence, non-finite stop, DDP, demo outputs."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train
from processor.trainer import NonFiniteLossError
from tests.training_utils import DEMO, ROOT, tiny_opts
from utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from configs import load_config
    from datasets.build import build_dataset

    root = str(tmp_path_factory.mktemp("synthetic") / "xfd")
    build_dataset(load_config(DEMO, tiny_opts(root, "unused")))
    return root


def model_weights(output_dir):
    return load_checkpoint(os.path.join(output_dir, "checkpoint_last.pth"))["model"]


def test_a_resumed_run_still_reports_its_best_epochs_validation(data_root, tmp_path):
    run = str(tmp_path / "run")
    first = train.main(["--config_file", DEMO] + tiny_opts(data_root, run, epochs=1, **{"SOLVER.EVAL_PERIOD": "1"}))
    assert first["best_epoch"] == 1 and first["final_val"] is not None
    # No validation after the resume: the final weights are checkpoint_best (epoch 1), whose summary
    # must come from the checkpoint.
    resumed = train.main(["--config_file", DEMO, "--resume", "auto"] + tiny_opts(data_root, run, epochs=2))
    assert resumed["final_weights"]["epoch"] == 1
    assert resumed["final_val"] is not None and resumed["final_val"]["mAP-3"] == pytest.approx(first["final_val"]["mAP-3"])


def test_resume_gives_the_same_weights_as_a_straight_run(data_root, tmp_path):
    straight = str(tmp_path / "straight")
    train.main(["--config_file", DEMO] + tiny_opts(data_root, straight, epochs=2))
    split = str(tmp_path / "split")
    train.main(["--config_file", DEMO] + tiny_opts(data_root, split, epochs=1))
    assert load_checkpoint(os.path.join(split, "checkpoint_last.pth"))["epoch"] == 1
    train.main(["--config_file", DEMO, "--resume", "auto"] + tiny_opts(data_root, split, epochs=2))
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


def test_non_finite_loss_stops_with_step_and_term(data_root, tmp_path, monkeypatch):
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

    steps_per_epoch = _steps_per_epoch(data_root)
    monkeypatch.setattr(trainer_module, "build_loss", poisoned_build_loss)
    out = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 .*term\(s\): \w+"):
        train.main(["--config_file", DEMO] + tiny_opts(data_root, out, epochs=3))
    state = load_checkpoint(os.path.join(out, "checkpoint_last.pth"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _steps_per_epoch(data_root):
    from configs import load_config
    from datasets.build import build_dataset, build_train_loader

    cfg = load_config(DEMO, tiny_opts(data_root, "unused"))
    return len(build_train_loader(cfg, build_dataset(cfg)))


def test_torchrun_two_processes_gloo(data_root, tmp_path):
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "ddp_worker.py"), out, "--config_file", DEMO] + tiny_opts(data_root, out, epochs=1)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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


def test_demo_config_end_to_end_writes_csv(data_root, tmp_path):
    out = str(tmp_path / "demo")
    opts = tiny_opts(data_root, out, epochs=1, **{"SOLVER.EVAL_PERIOD": "1", "TEST.EVAL_AFTER_TRAINING": "True"})
    report = train.main(["--config_file", DEMO] + opts)
    assert report["val_mAP_before"] is not None and report["val_mAP_after"] is not None
    assert os.path.isfile(os.path.join(out, "submission.csv"))
    assert os.path.isfile(os.path.join(out, "checkpoint_best.pth"))
    assert report["test"]["metrics_available"]
    assert set(report["test"]["cases"]) == {1, 2, 3}


def test_cuda_graph_runs_mark_every_forward_as_a_new_step(data_root, tmp_path, monkeypatch):
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
    train.main(["--config_file", DEMO] + tiny_opts(data_root, str(tmp_path / "run"), epochs=1,
                                                    **{"SOLVER.EVAL_PERIOD": "1"}))
    assert marks["forwards"] > 0 and marks["unmarked"] == 0


def test_cuda_graph_steps_follow_the_compile_mode():
    from model.build import compile_regions
    from tests.test_compile import tiny

    for mode, backend, expected in (("reduce-overhead", "inductor", True), ("default", "inductor", False),
                                    ("reduce-overhead", "eager", False)):
        _, model = tiny()
        compile_regions(model, mode, backend=backend)  # lazy: nothing is compiled until a call
        assert model.cuda_graph_steps is expected, (mode, backend)


def test_gradient_accumulation_under_cuda_graphs_is_refused_in_one_line(tmp_path):
    """CUDA graphs (reduce-overhead) reuse the memory of gradients accumulated across micro-steps."""
    from configs import ConfigError, load_config
    from processor.trainer import check_training_settings

    opts = ["MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", "reduce-overhead", "SOLVER.ACCUM_STEPS", "2"]
    with pytest.raises(ConfigError, match="SOLVER.ACCUM_STEPS 2 cannot be used with MODEL.COMPILE_MODE reduce-overhead"):
        check_training_settings(load_config(None, opts))
    check_training_settings(load_config(None, opts[:-1] + ["1"]))
    check_training_settings(load_config(None, ["MODEL.COMPILE", "True", "SOLVER.ACCUM_STEPS", "2"]))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config_file", DEMO, *opts,
                             "OUTPUT_DIR", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "SOLVER.ACCUM_STEPS 2 cannot be used" in result.stderr
