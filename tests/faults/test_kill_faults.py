"""SIGKILL while the real writers write a checkpoint or the submission CSV.

Row: process killed (SIGKILL) while writing -> the previous file is intact and loadable; no half
file under the final name. The child (tests/children/kill_child.py) calls the real save_checkpoint /
write_submission on a large payload and pauses in the middle of the write (torch's zip writer is
wrapped to pause after half the tensors; the CSV rows come from a generator that pauses), or
rewrites a checkpoint in a loop and is killed at random times.
"""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.children import kill_child
from tests.helpers.files import sha256
from tests.helpers.paths import REPO_ROOT
from utils.checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint
from utils.submission import read_submission, write_submission


def _start(mode: str, path: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.Popen([sys.executable, "-m", "tests.children.kill_child", mode, path], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline().strip()
    if line != word:
        proc.kill()
        raise AssertionError(f"child said {line!r}, expected {word!r}: {proc.stderr.read()[-3000:]}")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _others(folder, final_name):
    return sorted(n for n in os.listdir(folder) if n != final_name)


def _assert_whole(path: str, fill: float) -> None:
    state = load_checkpoint(path)
    assert state["epoch"] == int(fill)
    assert len(state["model"]) == kill_child.TENSORS
    assert all(bool((v == fill).all()) and v.numel() == kill_child.TENSOR_VALUES for v in state["model"].values())


@pytest.mark.slow
def test_sigkill_mid_checkpoint_keeps_the_previous_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint_last.pth")
    save_checkpoint(kill_child.checkpoint_state(1.0), path)
    before = sha256(path)

    proc = _start("checkpoint", path)
    _wait_for(proc, "PAUSED")  # half the tensors of the new checkpoint are written
    _kill(proc)

    assert sha256(path) == before
    _assert_whole(path, 1.0)
    leftovers = _others(tmp_path, "checkpoint_last.pth")
    assert leftovers and all(n.startswith(".checkpoint_last.pth.") and n.endswith(".tmp") for n in leftovers)
    # --resume auto finds the intact file and clears the dead writer's temporary file.
    found_path, state = find_resume_checkpoint(str(tmp_path))
    assert found_path == path and state["epoch"] == 1
    assert _others(tmp_path, "checkpoint_last.pth") == []


@pytest.mark.slow
def test_sigkill_mid_csv_keeps_the_previous_csv(tmp_path):
    path = str(tmp_path / "submission.csv")
    write_submission(path, [(1, "0001_1", ["0002_2", "0001_3"])])
    before = sha256(path)

    proc = _start("csv", path)
    _wait_for(proc, "PAUSED")  # half the rows of the new CSV are written
    _kill(proc)

    assert sha256(path) == before
    rows = read_submission(path)
    assert [r["query_tracklet"] for r in rows] == ["0001_1"]
    leftovers = _others(tmp_path, "submission.csv")
    assert leftovers and all(n.endswith(".tmp") for n in leftovers)
    assert sum(os.path.getsize(tmp_path / n) for n in leftovers) > 0  # the kill did land mid-write


@pytest.mark.slow
def test_sigkill_at_random_times_never_leaves_a_broken_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint_last.pth")
    save_checkpoint(kill_child.checkpoint_state(1.0), path)
    rng = random.Random(6)
    seen = set()
    for _ in range(3):
        proc = _start("loop", path)
        _wait_for(proc, "WRITING")
        time.sleep(rng.uniform(0.05, 0.8))
        _kill(proc)
        state = load_checkpoint(path)  # always a whole checkpoint: the old one or a newer one
        _assert_whole(path, float(state["epoch"]))
        seen.add(state["epoch"])
    assert torch.is_tensor(state["model"]["layer0.weight"])


def test_atomic_writes_give_the_mode_of_a_plain_write(tmp_path):
    """The temporary file's mode survives os.replace: it must not be mkstemp's 0600, or colleagues on a
    shared machine could not read the checkpoints and the CSV."""
    from utils.fileio import write_text_atomic

    previous = os.umask(0o022)
    try:
        save_checkpoint({"epoch": 1}, str(tmp_path / "checkpoint_last.pth"))
        write_text_atomic(str(tmp_path / "config.yaml"), "OUTPUT_DIR: x\n")
        write_submission(str(tmp_path / "submission.csv"), [(1, "0001_1", ["0002_2"])])
    finally:
        os.umask(previous)
    for name in ("checkpoint_last.pth", "config.yaml", "submission.csv"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name
