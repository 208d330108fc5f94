"""Checkpoint I/O (utils/checkpoint.py): atomic writes, weights_only refusal, damaged-file fallback, strict
loading; checksums written with the checkpoint, verified on every load, a mismatch refused as "corrupt" and passed
over by --resume auto, files without one loaded with a warning; error messages without torch's advice to load
with weights_only=False."""
import logging
import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch
from torch import nn

import utils.checkpoint as checkpoint
from utils.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checksum,
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


# ----------------------------------------------------------------------------- checksums
def state(epoch, size=20000):
    gen = torch.Generator().manual_seed(epoch)
    return {"model": {"w": torch.randn(size, generator=gen)}, "epoch": epoch, "best_map": 1.5}


def flip(path, offset, count=8):
    data = bytearray(open(path, "rb").read())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.fixture
def small_chunks(monkeypatch):
    """Many checksum chunks (and the parallel path) on a small file."""
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 4096)


def test_checkpoint_carries_a_checksum_and_torch_still_reads_it(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint(state(3), path)
    assert open(path, "rb").read()[-8:] == checkpoint.CHECKSUM_MAGIC
    assert verify_checksum(path) is True
    plain = torch.load(path, weights_only=True)          # the trailer is invisible to torch
    assert torch.equal(plain["model"]["w"], state(3)["model"]["w"])
    assert load_checkpoint(path)["epoch"] == 3


@pytest.mark.parametrize("where", [0.5, 0.1, 0.9])
def test_flipped_bytes_are_refused_as_corrupt(tmp_path, small_chunks, where):
    path = str(tmp_path / "c.pth")
    save_checkpoint(state(3), path)
    payload = os.path.getsize(path) - 32 - 4 * -(-(os.path.getsize(path)) // 4096)
    offset = int(payload * where)
    flip(path, offset)
    with pytest.raises(CheckpointError, match="corrupt") as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert path in message and "checksum mismatch" in message
    chunk_start = offset // 4096 * 4096
    assert f"bytes {chunk_start}.." in message            # the damaged chunk is located


def test_damaged_checksum_record_is_refused(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint(state(3), path)
    flip(path, os.path.getsize(path) - 36, 2)             # inside the CRC table
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_load_goes_through_torch_load_weights_only(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pth")
    save_checkpoint(state(1), path)
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    load_checkpoint(path)
    assert seen and all(k.get("weights_only") is True for k in seen)


def test_checkpoint_without_checksum_loads_with_a_warning(tmp_path, caplog):
    path = str(tmp_path / "old.pth")
    torch.save(state(2), path)                             # as older versions wrote it
    with caplog.at_level(logging.WARNING, logger="utils.checkpoint"):
        assert load_checkpoint(path)["epoch"] == 2
    assert any("no checksum" in r.getMessage() and path in r.getMessage() for r in caplog.records)


def test_resume_auto_passes_over_a_corrupt_checkpoint(tmp_path, caplog):
    save_checkpoint(state(4), str(tmp_path / "checkpoint_epoch4.pth"))
    save_checkpoint(state(5), str(tmp_path / "checkpoint_epoch5.pth"))
    save_checkpoint(state(5), str(tmp_path / "checkpoint_last.pth"))
    for name in ("checkpoint_last.pth", "checkpoint_epoch5.pth"):
        path = str(tmp_path / name)
        flip(path, os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING):
        path, loaded = find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint_epoch4.pth") and loaded["epoch"] == 4
    assert sum("corrupt" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("content", [b"", b"x", b"PK\x03\x04" + b"\0" * 20, bytes(range(256)) * 2])
def test_short_or_foreign_files_are_not_called_code(tmp_path, content):
    path = str(tmp_path / "bad.pth")
    open(path, "wb").write(content)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert "truncated or not a checkpoint" in str(caught.value) and "possibly code" not in str(caught.value)
    assert path in str(caught.value)


def test_checkpoint_file_mode_is_that_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(state(1), str(tmp_path / "c.pth"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c.pth").st_mode) == 0o644


# ----------------------------------------------------------------------------- error messages
def test_a_checkpoint_error_never_passes_on_the_advice_to_load_with_weights_only_false(tmp_path):
    path = str(tmp_path / "plain.pkl")
    with open(path, "wb") as f:
        pickle.dump({"state": set(range(50))}, f)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "weights_only" not in message and "Re-running" not in message, message
    assert "Unsupported operand" in message and path in message


def _file_with_checksum(path, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    open(path, "wb").write(bytes(torch.randint(0, 256, (length,), generator=gen, dtype=torch.uint8).tolist()))
    checkpoint.append_checksum(path)


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_a_payload_one_byte_past_a_whole_chunk_is_checked_to_its_last_byte(tmp_path, small_chunks, extra):
    path = str(tmp_path / "c.bin")
    length = 3 * 4096 + extra
    _file_with_checksum(path, length)
    assert verify_checksum(path) is True
    flip(path, length - 1, 1)                              # the payload's very last byte
    with pytest.raises(CheckpointError, match="checksum mismatch") as caught:
        verify_checksum(path)
    last_chunk = (length - 1) // 4096 * 4096
    assert f"bytes {last_chunk}..{length - 1} of {length}" in str(caught.value)


def test_chunk_size_keeps_any_length_within_max_chunks(tmp_path, monkeypatch):
    """Files longer than MAX_CHUNKS chunks get larger chunks (rounded up): the trailer never exceeds its bound."""
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 1)
    monkeypatch.setattr(checkpoint, "MAX_CHUNKS", 4)
    for length in range(1, 40):
        path = str(tmp_path / f"c{length}.bin")
        _file_with_checksum(path, length, seed=length)
        count = (os.path.getsize(path) - length - 32) // 4
        assert count <= 4 and verify_checksum(path) is True, length


def test_a_checkpoint_shortened_before_its_trailer_is_reported_as_truncated(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint(state(3), path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:1000] + data[1100:])       # 100 payload bytes lost, the trailer kept
    with pytest.raises(CheckpointError, match="does not fit its size"):
        load_checkpoint(path)


def test_resume_auto_falls_back_to_the_newest_good_epoch_checkpoint(tmp_path):
    for epoch in (3, 4, 5):
        save_checkpoint(state(epoch), str(tmp_path / f"checkpoint_epoch{epoch}.pth"))
    save_checkpoint(state(5), str(tmp_path / "checkpoint_last.pth"))
    flip(str(tmp_path / "checkpoint_last.pth"), os.path.getsize(tmp_path / "checkpoint_last.pth") // 2)
    path, loaded = find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint_epoch5.pth") and loaded["epoch"] == 5
