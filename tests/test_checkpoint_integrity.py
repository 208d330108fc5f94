"""Checkpoint checksums: written with the checkpoint, verified on every load, a mismatch refused as
"corrupt" and passed over by --resume auto; files without one still load, with a warning."""
import logging
import os
import stat

import pytest
import torch

import utils.checkpoint as checkpoint
from utils.checkpoint import (CheckpointError, find_resume_checkpoint, load_checkpoint, save_checkpoint,
                              verify_checksum)


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
