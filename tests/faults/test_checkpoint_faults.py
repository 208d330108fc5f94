"""Faulty checkpoints and a non-finite loss, through load_checkpoint, the training loop, and the
evaluate_all_cases.py / train.py command lines.

Rows: checkpoint from another config (other width, other class count); truncated checkpoint and
``--resume auto``; a checkpoint carrying a pickled code payload; non-finite loss.
"""
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

import train
from configs import config_from_yaml_text
from model.backbone import TINY_CONFIGS
from model.build import build_model
from processor.trainer import NonFiniteLossError
from tests.helpers.cli import assert_clean_failure, run_cli
from tests.helpers.files import sha256
from tests.helpers.paths import DEMO_CONFIG
from tests.helpers.training import make_tiny_opts
from utils import checkpoint as checkpoint_module
from utils.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint, load_model_state, save_checkpoint


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """A 2-epoch tiny run on tiny_root: checkpoint_epoch1.pth, checkpoint_epoch2.pth, checkpoint_last.pth."""
    base = tmp_path_factory.mktemp("checkpoints")
    root = tiny_root
    out = str(base / "run")
    train.main(["--config_file", DEMO_CONFIG, *make_tiny_opts(root, out, epochs=2)])
    state = load_checkpoint(os.path.join(out, "checkpoint_last.pth"))
    return SimpleNamespace(root=root, out=out, base=base, state=state,
                           cfg=config_from_yaml_text(state["config"]), meta=state["meta"])


def _foreign_state(trained, monkeypatch, width=None, extra_classes=0) -> dict:
    """The trained checkpoint with the weights of a model of another width or class count."""
    with monkeypatch.context() as patch:
        if width:
            patch.setitem(TINY_CONFIGS, "tiny-vit-16", dict(TINY_CONFIGS["tiny-vit-16"], width=width))
        model = build_model(trained.cfg, num_classes=trained.meta["num_classes"] + extra_classes,
                            num_cameras=trained.meta["num_cameras"])
    return dict(trained.state, model=model.state_dict())


@pytest.fixture(scope="module")
def foreign(trained):
    monkeypatch = pytest.MonkeyPatch()
    try:
        states = {"other width": _foreign_state(trained, monkeypatch, width=32),
                  "other class count": _foreign_state(trained, monkeypatch, extra_classes=3)}
    finally:
        monkeypatch.undo()
    paths = {}
    for name, state in states.items():
        paths[name] = str(trained.base / (name.replace(" ", "_") + ".pth"))
        save_checkpoint(state, paths[name])
    return SimpleNamespace(states=states, paths=paths)


def _evaluate(model_path, tmp_path):
    """evaluate_all_cases.py on ``model_path`` (data root and model from its stored config)."""
    return run_cli("evaluate_all_cases.py", "--model_path", model_path, "--csv", str(tmp_path / "submission.csv"),
                   "--output_file", str(tmp_path / "results.json"), "OUTPUT_DIR", str(tmp_path / "eval"))


# ----------------------------------------------------------------------------- another config
@pytest.mark.slow
@pytest.mark.parametrize("name, shapes", [
    ("other width", ("checkpoint (32", "vs model (64")),
    ("other class count", ("checkpoint (7,", "vs model (4,")),
])
def test_checkpoint_of_another_config_is_refused_by_evaluate_cli(trained, foreign, tmp_path, name, shapes):
    assert trained.meta["num_classes"] == 4  # the tiny root keeps 4 training identities (2 go to validation)
    proc = _evaluate(foreign.paths[name], tmp_path)
    assert_clean_failure(proc, foreign.paths[name], "does not fit this model (nothing was loaded)",
                         "differ in shape, first:", *shapes)
    assert not os.path.exists(tmp_path / "submission.csv") and not os.path.exists(tmp_path / "results.json")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["other width", "other class count"])
def test_mismatched_checkpoint_loads_nothing(trained, foreign, name):
    model = build_model(trained.cfg, num_classes=trained.meta["num_classes"], num_cameras=trained.meta["num_cameras"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="nothing was loaded"):
        load_model_state(model, foreign.states[name]["model"], foreign.paths[name])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not even the tensors that would fit


@pytest.mark.slow
def test_training_resume_from_another_config_stops_with_the_mismatch(trained, foreign, tmp_path):
    out = str(tmp_path / "resume")
    with pytest.raises(CheckpointError, match=r"nothing was loaded(.|\n)*checkpoint \(7,"):
        train.main(["--config_file", DEMO_CONFIG, "--resume", foreign.paths["other class count"],
                    *make_tiny_opts(trained.root, out, epochs=2)])
    assert not os.path.exists(os.path.join(out, "checkpoint_last.pth"))


# ----------------------------------------------------------------------------- truncated files
@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_checkpoint_is_a_clear_error(trained, tmp_path, keep):
    data = open(os.path.join(trained.out, "checkpoint_epoch1.pth"), "rb").read()
    path = str(tmp_path / "cut.pth")
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert path in str(caught.value) and "truncated or not a checkpoint" in str(caught.value)


@pytest.mark.slow
def test_resume_auto_reads_only_until_the_newest_good_checkpoint(trained, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    shutil.copytree(trained.out, out)
    with open(os.path.join(out, "checkpoint_last.pth"), "r+b") as f:
        f.truncate(1000)
    read = []
    real_load = checkpoint_module.load_checkpoint
    monkeypatch.setattr(checkpoint_module, "load_checkpoint",
                        lambda p, **k: read.append(os.path.basename(p)) or real_load(p, **k))
    path, state = find_resume_checkpoint(out)
    assert os.path.basename(path) == "checkpoint_epoch2.pth" and state["epoch"] == 2
    assert read == ["checkpoint_last.pth", "checkpoint_epoch2.pth"]  # epoch 1 is never read


@pytest.mark.slow
def test_train_cli_resume_auto_falls_back_to_the_previous_good_checkpoint(trained, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(trained.out, out)
    for name in ("checkpoint_last.pth", "checkpoint_epoch2.pth"):  # killed mid-epoch-2 by a faulty disk, say
        with open(os.path.join(out, name), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(out, name)) // 2)
    proc = run_cli("train.py", "--config_file", DEMO_CONFIG, "--resume", "auto",
                   *make_tiny_opts(trained.root, out, epochs=2))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Skipping damaged checkpoint" in text and "checkpoint_last.pth" in text
    assert "Resuming from " + os.path.join(out, "checkpoint_epoch1.pth") in text
    assert "Resumed from" in text and "epoch 2 done" in text and "epoch 1 [" not in text
    assert load_checkpoint(os.path.join(out, "checkpoint_last.pth"))["epoch"] == 2


# ----------------------------------------------------------------------------- pickled code
class _Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _payload_checkpoint(trained, folder, fmt: str) -> SimpleNamespace:
    """The trained checkpoint plus a _Payload, saved in torch's current ("zip") or legacy format."""
    marker = str(folder / "payload_ran")
    path = str(folder / fmt / "checkpoint_last.pth")
    os.makedirs(os.path.dirname(path))
    torch.save(dict(trained.state, extra=_Payload(marker)), path, _use_new_zipfile_serialization=fmt == "zip")
    torch.load(path, weights_only=False)  # proof that the payload is live ...
    assert os.path.isdir(marker)
    os.rmdir(marker)  # ... then reset the marker
    return SimpleNamespace(path=path, marker=marker)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_checkpoint_with_code_is_refused_and_nothing_runs(trained, tmp_path, fmt):
    payload = _payload_checkpoint(trained, tmp_path, fmt)
    with pytest.raises(CheckpointError, match="Refused to load"):
        load_checkpoint(payload.path)
    assert not os.path.exists(payload.marker)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_resume_auto_passes_over_a_checkpoint_with_code(trained, tmp_path, fmt):
    payload = _payload_checkpoint(trained, tmp_path, fmt)
    shutil.copy(os.path.join(trained.out, "checkpoint_epoch1.pth"), os.path.dirname(payload.path))
    path, state = find_resume_checkpoint(os.path.dirname(payload.path))
    assert path.endswith("checkpoint_epoch1.pth") and state["epoch"] == 1
    assert not os.path.exists(payload.marker)


@pytest.mark.slow
def test_evaluate_cli_refuses_a_checkpoint_with_code(trained, tmp_path):
    payload = _payload_checkpoint(trained, tmp_path, "zip")
    proc = _evaluate(payload.path, tmp_path)
    assert_clean_failure(proc, "Refused to load", payload.path)
    assert not os.path.exists(payload.marker)


# ----------------------------------------------------------------------------- non-finite loss
@pytest.mark.slow
def test_non_finite_loss_stops_naming_step_and_term_and_keeps_the_checkpoint(trained, tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    for name in ("checkpoint_epoch1.pth", "checkpoint_last.pth"):  # a run stopped after epoch 1
        shutil.copy(os.path.join(trained.out, "checkpoint_epoch1.pth"), os.path.join(out, name))
    before = sha256(os.path.join(out, "checkpoint_last.pth"))
    # Every identity term stays finite (~1.4e38) but their float32 sum overflows to inf at the first step.
    with pytest.raises(NonFiniteLossError) as caught:
        train.main(["--config_file", DEMO_CONFIG, "--resume", "auto",
                    *make_tiny_opts(trained.root, out, epochs=2, **{"LOSS.ID_WEIGHT": "1e38"})])
    message = str(caught.value)
    assert "Non-finite loss at epoch 2, step 1" in message and "overflow" in message and "id_" in message
    assert "last good checkpoint" in message and "another rank" not in message
    assert sha256(os.path.join(out, "checkpoint_last.pth")) == before
    state = load_checkpoint(os.path.join(out, "checkpoint_last.pth"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
