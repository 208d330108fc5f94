"""Stop requests from signals: Ctrl-C (SIGINT), a scheduler's SIGTERM (``timeout``, SLURM's
``scancel`` and time limit) and SLURM's warning signal SIGUSR1.

Inside :func:`stop_at_step_boundaries` the first of these signals only sets a flag; the loops check
it at their step boundaries (a training step, a batch of an inference loader: see
``datasets.build``) and raise :class:`RunInterrupted`, whose message says where the run stopped and
what is kept. A second signal stops at once (:class:`StoppedAtOnce`, a KeyboardInterrupt, so that
atomic writes still remove their temporary files on the way out).

Loader workers leave these signals to the main process (:func:`ignore_in_worker`): a scheduler signals
the whole process group, and a worker killed by it would end the run with the DataLoader's "worker
killed by signal" traceback. (A SIGTERM from the worker's own parent still ends it: that is how the
DataLoader and multiprocessing shut workers down.) Signals are blocked while workers are forked
(:func:`blocked`), so none arrives in a worker before it has set this up; the main process receives
them when they are unblocked.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

logger = logging.getLogger(__name__)

# Signals that ask a run to stop at its next step boundary.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class RunInterrupted(Exception):
    """A stop signal arrived; raised at the next step boundary. ``str()`` is the one line to print."""

    def __init__(self, message: str = "", signum: int | None = None):
        signum = _state["signum"] if signum is None else signum
        self.signum = signum
        super().__init__(message or f"Interrupted by {signal_name(signum)}")


class StoppedAtOnce(KeyboardInterrupt):
    """A second stop signal (or Ctrl-C outside a run's step loop): stop now."""


_state: dict = {"signum": None, "installed": False}


def signal_name(signum: int | None) -> str:
    if signum is None:
        return "a signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_signal() -> int | None:
    """The first stop signal received inside :func:`stop_at_step_boundaries`, or None."""
    return _state["signum"]


def stop_requested() -> bool:
    return _state["signum"] is not None


def stop_requested_on_any_rank(device) -> bool:
    """Whether a stop signal reached this process or, under torch.distributed, any other rank: all
    ranks must stop at the same step, or the others hang in their next collective. One process: the
    flag alone (no device sync); several: an all-reduce on ``device`` read back to the host (a sync,
    so a training loop asks only now and then)."""
    from utils import distributed

    if distributed.get_world_size() == 1:
        return stop_requested()
    import torch

    flag = torch.tensor(float(stop_requested()), device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def loader_deaths_as_stops(batches, interrupted):
    """The batches of a loader; once a stop signal arrived, a loader error (a worker killed by the
    same signal sent to the process group) raises ``interrupted(batches_so_far)`` (an exception) instead.
    Without a stop signal a loader error stays what it is."""
    iterator = iter(batches)
    count = 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError:
            if not stop_requested():
                raise
            raise interrupted(count) from None
        count += 1
        yield batch


def check_stop(where: str = "") -> None:
    """A step boundary: raise RunInterrupted when a stop signal arrived (``where`` goes into the message)."""
    if _state["signum"] is not None:
        text = f"Interrupted by {signal_name(_state['signum'])}" + (f" {where}" if where else "")
        raise RunInterrupted(text)


def reset() -> None:
    """Forget a received signal (tests; a new run in the same process)."""
    _state["signum"] = None


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    if _state["signum"] is not None:
        raise StoppedAtOnce(f"a second stop signal, {signal_name(signum)}")
    _state["signum"] = signum
    logger.warning("%s: stopping at the next step boundary (send it again, e.g. Ctrl-C, to stop at once)",
                   signal_name(signum))


@contextlib.contextmanager
def stop_at_step_boundaries():
    """Within this block, STOP_SIGNALS set the stop flag (see the module docstring). Main thread only:
    elsewhere (signals go to the main thread) it does nothing. The flag is cleared on entry and on
    exit, so loops run later in the same process (tests, the Python API) are not stopped by it."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    reset()
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    _state["installed"] = True
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state["installed"] = False
        reset()


@contextlib.contextmanager
def blocked(signals=STOP_SIGNALS):
    """Block ``signals`` in the calling thread for the block (fork loader workers inside it: they
    inherit the mask and ignore the signals before unblocking them; see :func:`ignore_in_worker`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_in_worker() -> None:
    """In a loader worker (main thread, at start-up): leave STOP_SIGNALS to the main process.

    SIGINT and SIGUSR1 are ignored (ignoring a signal drops one that is pending, so one that came
    while the worker was forked is not acted on here). SIGTERM stays blocked and a thread waits for
    it: one sent by the worker's parent ends the worker as before (the DataLoader's and
    multiprocessing's shutdown terminate workers with SIGTERM; a worker that ignored it would hang
    its parent's exit), one from anyone else (a process-group signal from ``timeout`` or a
    scheduler) is dropped: the main process stops the run at its next step boundary.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # before anything can deliver it
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN if s != signal.SIGTERM else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [s for s in STOP_SIGNALS if s != signal.SIGTERM])
    threading.Thread(target=_terminate_on_parents_sigterm, args=(os.getppid(),), name="sigterm-from-parent",
                     daemon=True).start()


def _terminate_on_parents_sigterm(parent: int) -> None:
    """Wait for SIGTERM (blocked in every thread of the worker); die by it when ``parent`` sent it or
    the parent is gone, else drop it."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})   # SIG_DFL: terminate, as asked
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            os._exit(128 + signal.SIGTERM)
