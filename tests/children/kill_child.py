"""Child process of test_kill_faults.py: writes with the real writers and is SIGKILLed mid-write.

    python -m tests.children.kill_child checkpoint PATH   # save_checkpoint, pauses after half the tensors
    python -m tests.children.kill_child csv PATH          # write_submission, pauses after half the rows
    python -m tests.children.kill_child loop PATH         # save_checkpoint over and over (killed at random)

Prints ``PAUSED`` (or ``WRITING`` for loop) on stdout once the parent may kill it.
"""
from __future__ import annotations

import sys
import time

import torch

TENSORS = 8            # tensors in the test checkpoint
TENSOR_VALUES = 1 << 20  # 4 MiB of float32 per tensor: 32 MiB per checkpoint
CSV_ROWS = 400
CSV_GALLERY = 2000     # ranked names per row: ~20 kB per row, far beyond the file buffer


def checkpoint_state(fill: float) -> dict:
    """A checkpoint-shaped state whose every value is ``fill`` (so a reader can tell versions apart)."""
    return {"model": {f"layer{i}.weight": torch.full((TENSOR_VALUES,), float(fill)) for i in range(TENSORS)},
            "epoch": int(fill), "config": "OUTPUT_DIR: x\n"}


def csv_rows(case_names_prefix: str, pause_at: int | None):
    gallery = [f"{9000 + g}_{g}" for g in range(CSV_GALLERY)]
    for q in range(CSV_ROWS):
        if q == pause_at:
            print("PAUSED", flush=True)
            time.sleep(600)
        yield 1, f"{case_names_prefix}{q}_{q}", gallery


class _PausingRecords:
    """Stands in for torch's zip writer: forwards every call, pauses after half the tensor records."""

    def __init__(self, writer, pause_after: int):
        self._writer = writer
        self._left = pause_after

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def write_record(self, name, data, num_bytes):
        self._writer.write_record(name, data, num_bytes)
        if name.startswith("data/"):
            self._left -= 1
            if self._left == 0:
                print("PAUSED", flush=True)
                time.sleep(600)


def pause_torch_writes(pause_after: int) -> None:
    import torch.serialization as serialization

    real_open = serialization._open_zipfile_writer

    class Opener:
        def __init__(self, target):
            self._opener = real_open(target)

        def __enter__(self):
            return _PausingRecords(self._opener.__enter__(), pause_after)

        def __exit__(self, *exc):
            return self._opener.__exit__(*exc)

    serialization._open_zipfile_writer = Opener


def main(mode: str, path: str) -> None:
    from utils.checkpoint import save_checkpoint
    from utils.submission import write_submission

    if mode == "checkpoint":
        pause_torch_writes(TENSORS // 2)
        save_checkpoint(checkpoint_state(2.0), path)
    elif mode == "csv":
        write_submission(path, csv_rows("1", pause_at=CSV_ROWS // 2))
    elif mode == "loop":
        print("WRITING", flush=True)
        version = 1
        while True:
            version += 1
            save_checkpoint(checkpoint_state(version), path)
    else:
        raise SystemExit(f"unknown mode {mode}")
    raise SystemExit("the write finished: the parent was meant to kill it first")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
