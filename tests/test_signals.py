"""Signals as a scheduler sends them (issue 20.2): SIGTERM / SIGINT / SIGUSR1 to the whole process group
of a real ``train.py`` with loader workers, in each phase of a run (training steps, the memory rebuild,
validation, the final evaluation), and the run lock on OUTPUT_DIR held against a second real process
(issue 20.1). Plus the unit behaviour of ``utils.signals``.

The phase runs use ``tests/children/signal_child.py`` (the real train.py, with its phases announced in a file and
the loader workers slowed down in the chosen phase) so the signal lands in that phase every time.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.cli import CLI_ENV
from tests.helpers.paths import DEMO_CONFIG, REPO_ROOT
from tests.helpers.training import make_tiny_opts

ENV = dict(CLI_ENV, SAS_PROGRESS="0")
CHILD = os.path.join(REPO_ROOT, "tests", "children", "signal_child.py")


_started = []


@pytest.fixture(autouse=True)
def no_run_left_behind():
    """A failed test kills the process group of any run it started."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_opts(data_root, out, **extra):
    """Two epochs, validation every epoch, test evaluation at the end, two loader workers."""
    return make_tiny_opts(data_root, out, epochs=2, **{"DATALOADER.NUM_WORKERS": "2", "SOLVER.EVAL_PERIOD": "1",
                                                  "TEST.EVAL_AFTER_TRAINING": "True", "SOLVER.LOG_PERIOD": "100",
                                                  **extra})


def start_in_phase(tmp_path, target, opts, hold=False):
    """Start train.py (own process group) and wait until its loader workers are in phase ``target``
    (with ``hold``, they stay there until ``release(tmp_path)``)."""
    phase_file, marker = str(tmp_path / "phase"), str(tmp_path / "marker")
    if hold:
        open(marker + ".hold", "w").close()
    proc = subprocess.Popen([sys.executable, CHILD, phase_file, target, marker, "--config_file", DEMO_CONFIG, *opts],
                            cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _started.append(proc)
    deadline = time.time() + 900
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if not os.path.exists(marker):
        out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
        proc.kill()
        pytest.fail(f"the run never reached phase {target!r}:\n{out[-3000:]}\n{err[-3000:]}")
    return proc


def release(tmp_path):
    os.remove(str(tmp_path / "marker") + ".hold")


def signal_group(proc, signum):
    """What timeout, scancel and a job's time limit do: the signal to every process of the group."""
    os.killpg(proc.pid, signum)
    return communicate(proc)


def communicate(proc):
    try:
        return proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:   # a failed test leaves no run behind
            os.killpg(proc.pid, signal.SIGKILL)


def assert_stopped(proc, stdout, stderr, out, *needles):
    text = stdout + stderr
    assert proc.returncode == 130, text[-5000:]
    assert "Traceback" not in text and "killed by signal" not in text, text[-5000:]
    lines = [line for line in stderr.splitlines() if line.startswith("Interrupted")]
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    leftovers = [name for _, _, files in os.walk(out) for name in files if name.endswith(".tmp") or name == "run.lock"]
    assert not leftovers, leftovers
    assert lines[0] in open(os.path.join(out, "log.txt")).read(), "the interrupt line is not in log.txt"
    return lines[0]


@pytest.mark.slow
def test_sigterm_to_the_group_in_training_steps_and_the_run_lock(train_data_root, tmp_path):
    out = str(tmp_path / "run")
    proc = start_in_phase(tmp_path, "train2", run_opts(train_data_root, out), hold=True)
    # A second real process into the same OUTPUT_DIR refuses at once, naming the first; the first's
    # files stay as they are.
    log = os.path.join(out, "log.txt")
    config = open(os.path.join(out, "config.yaml"), "rb").read()
    log_start = open(log).read()
    second = subprocess.run([sys.executable, "train.py", "--config_file", DEMO_CONFIG, *run_opts(train_data_root, out)],
                            cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    text = second.stdout + second.stderr
    assert second.returncode == 1 and "Traceback" not in text, text[-3000:]
    message = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, text[-3000:]
    for needle in (f"OUTPUT_DIR {out} is in use by another run", f"pid {proc.pid}", f"host {socket.gethostname()}",
                   "started 20", "command: python train.py --config_file", f"kill {proc.pid}", "another folder"):
        assert needle in message[0], message[0]
    assert open(os.path.join(out, "config.yaml"), "rb").read() == config
    assert open(log).read().startswith(log_start), "the second process changed the first's log"
    assert proc.poll() is None, "the first run must go on"

    os.killpg(proc.pid, signal.SIGTERM)
    release(tmp_path)
    stdout, stderr = communicate(proc)
    assert_stopped(proc, stdout, stderr, out, "Interrupted at epoch 2, step", "epoch 1) is kept",
                   "resume with: python train.py --config_file", "--resume auto")
    import torch

    assert torch.load(os.path.join(out, "checkpoint_last.pth"), weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_sigint_to_the_group_in_the_memory_rebuild(train_data_root, tmp_path):
    out = str(tmp_path / "run")
    proc = start_in_phase(tmp_path, "rebuild2", run_opts(train_data_root, out))
    stdout, stderr = signal_group(proc, signal.SIGINT)
    assert_stopped(proc, stdout, stderr, out, "Interrupted at epoch 2, during the memory rebuild", "epoch 1) is kept",
                   "--resume auto")


@pytest.mark.slow
def test_sigusr1_in_validation_saves_the_epoch_and_the_resumed_run_validates_it_first(train_data_root, tmp_path):
    out = str(tmp_path / "run")
    proc = start_in_phase(tmp_path, "validation epoch 1", run_opts(train_data_root, out))
    stdout, stderr = signal_group(proc, signal.SIGUSR1)
    assert_stopped(proc, stdout, stderr, out, "Interrupted at epoch 1, during its validation",
                   "(epoch 1, validation pending) is kept", "--resume auto")
    from utils.checkpoint import load_checkpoint

    state = load_checkpoint(os.path.join(out, "checkpoint_last.pth"))
    assert state["epoch"] == 1 and state["validation_pending"] is True
    resumed = subprocess.run([sys.executable, "train.py", "--config_file", DEMO_CONFIG, "--resume", "auto",
                              *run_opts(train_data_root, out, **{"TEST.EVAL_AFTER_TRAINING": "False"})],
                             cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-5000:]
    assert "Validating epoch 1 first (its validation was interrupted)" in text
    assert text.index("val (epoch 1)") < text.index("epoch 2 done")
    epoch_line = next(line for line in text.splitlines() if "epoch 2 done in" in line)
    assert "| elapsed 0:" in epoch_line and " left" in epoch_line, epoch_line   # the time left for the run
    assert "validation_pending" not in load_checkpoint(os.path.join(out, "checkpoint_last.pth"))


@pytest.mark.slow
def test_sigterm_in_the_final_evaluation_then_resume_auto_only_evaluates(train_data_root, tmp_path):
    out = str(tmp_path / "run")
    proc = start_in_phase(tmp_path, "final", run_opts(train_data_root, out))
    stdout, stderr = signal_group(proc, signal.SIGTERM)
    assert_stopped(proc, stdout, stderr, out, "Interrupted during the final evaluation: training is complete",
                   "no submission.csv was written", "--resume auto")
    assert not os.path.exists(os.path.join(out, "submission.csv"))
    tables = open(os.path.join(out, "log.txt")).read().count("DetReIDX at ")
    resumed = subprocess.run([sys.executable, "train.py", "--config_file", DEMO_CONFIG, "--resume", "auto",
                              *run_opts(train_data_root, out)], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                             timeout=900)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-5000:]
    assert "Training was complete: " in text and "holds epoch 2 of 2" in text and "final evaluation only" in text
    assert " done in " not in text   # no epoch trained again
    assert os.path.isfile(os.path.join(out, "submission.csv"))
    assert open(os.path.join(out, "log.txt")).read().count("DetReIDX at ") == tables   # no second dataset table
    results = json.load(open(os.path.join(out, "test_results.json")))
    assert os.path.basename(results["checkpoint"]) in ("checkpoint_best.pth", "checkpoint_last.pth")


# ----------------------------------------------------------------------------- utils.signals in-process
def test_first_signal_sets_the_flag_second_stops_at_once_and_the_flag_never_outlives_the_block():
    from utils import signals

    with signals.stop_at_step_boundaries():
        signals.check_stop()   # nothing received: no exception
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert signals.stop_signal() == signal.SIGUSR1
        with pytest.raises(signals.RunInterrupted, match="Interrupted by SIGUSR1 during x"):
            signals.check_stop("during x")
        with pytest.raises(signals.StoppedAtOnce):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert signals.stop_signal() is None
    signals.check_stop()   # outside the block the API never stops
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_loader_error_is_the_interrupt_only_after_a_stop_signal():
    """signals.loader_deaths_as_stops (the training loop's loader): a worker killed by the group's signal
    is the interrupt, counted in batches; the same error without a signal stays an error. And one
    process asks no other rank whether to stop."""
    from utils import signals

    def loader():
        yield "a"
        yield "b"
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated")

    interrupted = lambda done: signals.RunInterrupted(f"stopped after {done} batches")   # noqa: E731
    with pytest.raises(RuntimeError, match="killed by signal"):
        list(signals.loader_deaths_as_stops(loader(), interrupted))
    with signals.stop_at_step_boundaries():
        assert not signals.stop_requested_on_any_rank("cpu")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert signals.stop_requested_on_any_rank("cpu")
        seen = []
        with pytest.raises(signals.RunInterrupted, match="stopped after 2 batches"):
            for batch in signals.loader_deaths_as_stops(loader(), interrupted):
                seen.append(batch)
        assert seen == ["a", "b"]   # the batches before the error were trained on
    assert not signals.stop_requested()


@pytest.mark.slow
def test_inference_loader_is_a_step_boundary_and_its_workers_ignore_stop_signals(tiny_root):
    """A stop signal ends an inference loop before its next batch; the workers, forked with the signals
    blocked, ignore them (a worker killed by a group signal would end the run with a traceback)."""
    from datasets.build import build_dataset, build_inference_loader
    from tests.helpers.data import make_tiny_cfg
    from utils import signals

    cfg = make_tiny_cfg(tiny_root, "DATALOADER.NUM_WORKERS", "2", "TEST.IMS_PER_BATCH", "2")
    tracklets = build_dataset(cfg).cases[3].gallery
    loader = build_inference_loader(cfg, tracklets)
    with signals.stop_at_step_boundaries():
        batches = iter(loader)
        next(batches)
        workers = [w.pid for w in batches.gi_frame.f_locals["iterator"]._workers]
        assert len(workers) == 2
        for pid in workers:   # as a process-group signal from a scheduler would (sent by another process)
            for name in ("TERM", "USR1", "INT"):
                subprocess.run(["kill", f"-{name}", str(pid)], check=True)
        time.sleep(0.5)
        for pid in workers:
            assert _alive(pid), "a loader worker died from a stop signal"
        next(batches)   # the workers still deliver
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        with pytest.raises(signals.RunInterrupted):
            next(batches)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


EXIT_WITH_LIVE_WORKERS = """
import os, signal, sys
from datasets.build import SignalSafeLoader, seed_worker
loader = SignalSafeLoader(list(range(100)), batch_size=2, num_workers=2, worker_init_fn=seed_worker,
                          persistent_workers=True)
batches = iter(loader)
next(batches)
print(" ".join(str(w.pid) for w in batches._workers), flush=True)
sys.stdin.readline()
print("exiting", flush=True)
"""


@pytest.mark.slow
def test_workers_end_on_their_parents_sigterm_so_exit_does_not_hang():
    """Workers drop a SIGTERM from anyone but their parent; the parent's own SIGTERM (how the DataLoader
    and multiprocessing's exit handler stop workers) still ends them, so a process that exits with live
    persistent workers does not hang."""
    proc = subprocess.Popen([sys.executable, "-c", EXIT_WITH_LIVE_WORKERS], cwd=REPO_ROOT, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        for pid in workers:
            subprocess.run(["kill", "-TERM", str(pid)], check=True)
        time.sleep(0.5)
        assert all(_alive(pid) for pid in workers)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "exiting"
        assert proc.wait(timeout=60) == 0, "the exit hung on workers that ignore their parent's SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
