"""Stop requests from signals: Ctrl-C (SIGINT), a scheduler's SIGTERM (``timeout``, SLURM's
``scancel`` and time limit) and SLURM's warning signal SIGUSR1.

Inside :func:`stop_at_step_boundaries` the first of these signals only sets a flag; the loops check
it at their step boundaries (a training step, a batch of an inference loader: see
``datasets.build``) and raise :class:`RunInterrupted`, whose message says where the run stopped and
what is kept. A second signal stops at once (:class:`StoppedAtOnce`, a KeyboardInterrupt, so that
atomic writes still remove their temporary files on the way out).

Loader workers ignore these signals (:func:`ignore_in_worker`): a scheduler signals the whole process
group, and a worker killed by it would end the run with the DataLoader's "worker killed by signal"
traceback. Signals are blocked while workers are forked (:func:`blocked`), so none arrives in a worker
before it ignores them; the main process receives them when they are unblocked.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading

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
    """In a loader worker: leave STOP_SIGNALS to the main process. Ignoring a signal drops one that is
    pending, so a signal that came while the worker was forked is not acted on here."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
