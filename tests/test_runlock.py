"""The run lock (issue 20.1): one process per output folder; a second real process refuses at once naming
the holder; the stale lock of a killed process is taken over with a warning; nothing is left behind.
(The lock against a second real ``train.py`` is in tests/test_signals.py, on a running training run.)"""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers.paths import DEMO_CONFIG, REPO_ROOT
from utils.runlock import LOCK_NAME, RunLock, RunLockError

HOLDER = ("import sys, time\n"
          "from utils.runlock import RunLock\n"
          "lock = RunLock(sys.argv[1], what='OUTPUT_DIR', elsewhere='train into another folder').acquire()\n"
          "print('held', flush=True)\n"
          "time.sleep(600)\n")


def start_holder(folder):
    """A real process holding the lock on ``folder`` (it says 'held' once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, folder, "--some-option", "x y"], cwd=REPO_ROOT,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_at_once_naming_the_holder_and_what_to_do(tmp_path):
    folder = str(tmp_path / "run")
    holder = start_holder(folder)
    try:
        with pytest.raises(RunLockError) as refused:
            RunLock(folder, what="OUTPUT_DIR", elsewhere="train into another folder").acquire()
        message = str(refused.value)
        assert "\n" not in message
        for needle in (f"OUTPUT_DIR {folder} is in use by another run", f"pid {holder.pid}",
                       f"host {socket.gethostname()}", "started 20", "command: ", "--some-option 'x y'",
                       "Wait for it to finish", f"kill {holder.pid}", "train into another folder",
                       os.path.join(folder, LOCK_NAME)):
            assert needle in message, (needle, message)
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_the_stale_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
    folder = str(tmp_path / "run")
    holder = start_holder(folder)
    holder.send_signal(signal.SIGKILL)   # no chance to clean up: the lock file stays
    holder.wait()
    path = os.path.join(folder, LOCK_NAME)
    assert json.load(open(path))["pid"] == holder.pid
    lock = RunLock(folder).acquire()
    try:
        assert lock.taken_over and f"pid {holder.pid}" in lock.taken_over and "no longer holds it" in lock.taken_over
        assert json.load(open(path))["pid"] == os.getpid()
    finally:
        lock.release()
    assert not os.path.exists(path)


def test_release_removes_the_lock_and_an_empty_folder_it_created(tmp_path):
    folder = str(tmp_path / "new" / "run")
    with RunLock(folder) as lock:
        assert lock.taken_over is None
        info = json.load(open(os.path.join(folder, LOCK_NAME)))
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert not os.path.exists(folder)
    kept = str(tmp_path / "kept")
    with RunLock(kept):
        open(os.path.join(kept, "log.txt"), "w").close()
    assert os.listdir(kept) == ["log.txt"]


def test_one_process_cannot_hold_one_folder_twice(tmp_path):
    """POSIX record locks never conflict within one process: the lock keeps its own table (tools.ablate
    and tests run train.main more than once in one process)."""
    folder = str(tmp_path / "run")
    with RunLock(folder):
        with pytest.raises(RunLockError, match="already in use by this process"):
            RunLock(folder).acquire()
    with RunLock(folder):   # free again after release
        pass


def test_a_live_holder_is_never_taken_over_even_where_record_locks_do_nothing(tmp_path, monkeypatch):
    """A filesystem whose locks always succeed: the holder's pid and start time still refuse."""
    import fcntl

    folder = str(tmp_path / "run")
    holder = start_holder(folder)
    try:
        monkeypatch.setattr(fcntl, "lockf", lambda fd, op: None)
        with pytest.raises(RunLockError, match=f"pid {holder.pid}"):
            RunLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_train_cli_releases_the_lock_and_a_wrong_root_leaves_no_folder(tmp_path):
    import train

    out = str(tmp_path / "out")
    with pytest.raises(Exception, match="does not exist"):
        train.main(["--config_file", DEMO_CONFIG, "DATASETS.ROOT_DIR",
                    str(tmp_path / "typo"), "OUTPUT_DIR", out])
    assert not os.path.exists(out), "a wrong data root must leave no config.yaml, log.txt or folder"


def test_an_evaluation_refuses_a_folder_another_evaluation_holds(tiny_checkpoint, tmp_path):
    import evaluate_all_cases

    root, checkpoint = tiny_checkpoint
    eval_dir = str(tmp_path / "eval")
    holder = start_holder(eval_dir)
    try:
        with pytest.raises(RunLockError, match=f"Evaluation folder {eval_dir} is in use by another run: pid {holder.pid}"):
            evaluate_all_cases.main(["--model_path", checkpoint, "--eval_dir", eval_dir, "DATASETS.ROOT_DIR", root])
        assert os.listdir(eval_dir) == [LOCK_NAME], "the refused evaluation wrote into the folder"
    finally:
        holder.kill()
        holder.wait()


def test_the_record_lock_alone_refuses_a_holder_whose_pid_cannot_be_checked(tmp_path, monkeypatch):
    """A holder on another machine (a shared filesystem): its pid means nothing here, the lock decides."""
    import utils.runlock as runlock

    folder = str(tmp_path / "run")
    holder = start_holder(folder)
    here = socket.gethostname()
    try:
        monkeypatch.setattr(runlock.socket, "gethostname", lambda: "another-machine")
        with pytest.raises(RunLockError, match=f"pid {holder.pid} on host {here}"):
            RunLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_one_process_cannot_hold_one_folder_twice_by_another_spelling_of_its_path(tmp_path):
    folder = str(tmp_path / "run")
    link = str(tmp_path / "link")
    os.makedirs(folder)
    os.symlink(folder, link)
    with RunLock(folder):
        for other in (folder + os.sep + ".", link):
            with pytest.raises(RunLockError, match="already in use by this process"):
                RunLock(other).acquire()


def _sleeper():
    """A live process that is not a lock holder (its pid is 'alive' to the lock's checks)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _plant_lock(folder, **info):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        f.write(json.dumps(info) + "\n")


def test_a_stale_lock_whose_pid_was_reused_by_another_process_is_taken_over(tmp_path):
    from utils.runlock import _process_start_ticks

    folder = str(tmp_path / "run")
    other = _sleeper()
    try:
        ticks = None
        while ticks is None:
            ticks = _process_start_ticks(other.pid)
        # The lock's holder had this pid but started at another time: the pid now belongs to someone else.
        _plant_lock(folder, pid=other.pid, host=socket.gethostname(), started="2026-01-01 00:00:00",
                    command="python train.py", start_ticks=ticks + 1)
        with RunLock(folder) as lock:
            assert lock.taken_over and f"pid {other.pid}" in lock.taken_over
    finally:
        other.kill()
        other.wait()


def test_a_free_lock_of_a_pid_on_another_host_is_taken_over_even_when_that_pid_lives_here(tmp_path):
    from utils.runlock import _process_start_ticks

    folder = str(tmp_path / "run")
    other = _sleeper()
    try:
        ticks = None
        while ticks is None:
            ticks = _process_start_ticks(other.pid)
        _plant_lock(folder, pid=other.pid, host="another-machine", started="2026-01-01 00:00:00",
                    command="python train.py", start_ticks=ticks)
        with RunLock(folder) as lock:
            assert lock.taken_over and "another-machine" in lock.taken_over
    finally:
        other.kill()
        other.wait()


def test_release_leaves_a_lock_file_that_is_no_longer_its_own(tmp_path):
    folder = str(tmp_path / "run")
    path = os.path.join(folder, LOCK_NAME)
    lock = RunLock(folder).acquire()
    os.remove(path)                                   # e.g. removed by hand, then another run locked the folder
    _plant_lock(folder, pid=12345, host="elsewhere")
    lock.release()
    assert json.load(open(path))["pid"] == 12345
