"""Checkpoint I/O: atomic writes, weights_only refusal, damaged-file fallback, strict loading."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from utils.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 2, "config": "A: 1\n"}, str(path))
    state = load_checkpoint(str(path))
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temp file left behind


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > " + os.environ.get("SAS_PWN_MARK", "/dev/null"),))


def test_pickled_code_is_refused_and_not_executed(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("SAS_PWN_MARK", str(mark))
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Payload()}, str(path))
    with pytest.raises(CheckpointError, match="Refused"):
        load_checkpoint(str(path))
    assert not mark.exists()


def test_truncated_checkpoint_error_and_resume_fallback(tmp_path):
    good = {"model": {}, "epoch": 4}
    save_checkpoint(good, str(tmp_path / "checkpoint_epoch4.pth"))
    save_checkpoint({"model": {}, "epoch": 5}, str(tmp_path / "checkpoint_last.pth"))
    data = (tmp_path / "checkpoint_last.pth").read_bytes()
    (tmp_path / "checkpoint_last.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(str(tmp_path / "checkpoint_last.pth"))
    path, state = find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint_epoch4.pth") and state["epoch"] == 4


def test_resume_prefers_last_when_good(tmp_path):
    save_checkpoint({"model": {}, "epoch": 5}, str(tmp_path / "checkpoint_epoch5.pth"))
    save_checkpoint({"model": {}, "epoch": 6}, str(tmp_path / "checkpoint_last.pth"))
    path, state = find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint_last.pth") and state["epoch"] == 6
    assert find_resume_checkpoint(str(tmp_path / "empty")) is None


def test_mismatched_state_dict_loads_nothing():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5)).state_dict()
    with pytest.raises(CheckpointError, match=r"1\.weight: checkpoint \(5, 3\) vs model \(2, 3\)"):
        load_model_state(model, other, "other.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # no partial load


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    state = rng_state()
    save_checkpoint({"rng": state}, str(tmp_path / "r.pth"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(str(tmp_path / "r.pth"))["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
