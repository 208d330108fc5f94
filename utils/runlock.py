"""One process per output folder: a lock file held for a whole run (``train.py`` on OUTPUT_DIR, also
per row of ``tools.ablate``; ``evaluate_all_cases.py`` on its evaluation folder).

``FOLDER/run.lock`` holds one JSON line naming the holder (pid, host, start time, command) and carries
a POSIX record lock (``fcntl.lockf``) for as long as the holder runs. The kernel drops that lock when
the process ends, however it ends (SIGKILL, a crash, a lost node on NFS with lock recovery), so:

* a second process that finds the lock held refuses at once with :class:`RunLockError`, a one-line
  message naming the holder and what to do;
* a lock file whose lock is free was left by a process that died: it is taken over, and the caller
  logs :attr:`RunLock.taken_over` as a warning;
* POSIX locks are not inherited by forked children (loader workers), so the lock ends with the
  holder itself. Within one process, a second lock on a folder already held is refused too.

The lock file is removed when the run ends (release, or the ``with`` block exits).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys

from utils.fileio import WriteFailure, ensure_folder

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
_HELD: dict[str, "RunLock"] = {}   # realpath of the lock file -> the lock this process holds


class RunLockError(RuntimeError):
    """The folder is in use by another run; the message names it and says what to do."""


def command_line() -> str:
    """This process's command line as typed (``python train.py ...``)."""
    program = os.path.basename(sys.executable) if sys.argv and sys.argv[0].endswith(".py") else ""
    argv = list(sys.argv)
    if argv and argv[0].startswith(os.getcwd() + os.sep):
        argv[0] = os.path.relpath(argv[0])
    return " ".join(filter(None, [program, shlex.join(argv)]))


def _process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc), to tell a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(info: dict) -> str:
    """'pid 123 on host h, started 2026-05-10 22:50:01, command: python train.py ...'"""
    if not info:
        return "an unknown process (the lock file is empty)"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}, "
            f"command: {info.get('command', '?')}")


class RunLock:
    """``with RunLock(folder, what="OUTPUT_DIR", elsewhere="..."):`` holds ``folder/run.lock``.

    what: how the message names the folder; elsewhere: the alternative the message offers (e.g.
    "train into another folder (OUTPUT_DIR other/folder)"). Creates ``folder`` (and missing parents)
    if needed; the folders it created that are empty when the lock is released are removed again.
    """

    def __init__(self, folder: str, what: str = "folder", elsewhere: str = "use another folder",
                 command: str | None = None):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.what = what
        self.elsewhere = elsewhere
        self.command = command or command_line()
        self.fd: int | None = None
        self.created_folders: list[str] = []   # folders acquire() created, deepest first
        self.taken_over: str | None = None   # a warning to log: the stale lock of a dead process was taken over
        self.info: dict = {}

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "RunLock":
        self.created_folders = _missing_folders(self.folder)
        ensure_folder(self.folder)
        key = os.path.realpath(self.path)
        if key in _HELD:
            raise RunLockError(self._busy_message(_HELD[key].info, same_process=True))
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise WriteFailure(self.path, exc) from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_info(fd)
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise RunLockError(self._busy_message(holder)) from None
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    logger.warning("Cannot lock %s (%s): this filesystem does not support locks, so a second run "
                                   "into %s is not prevented", self.path, os.strerror(exc.errno), self.folder)
                    return self
                raise WriteFailure(self.path, exc) from None
            # Locked: make sure the file is still the one at self.path (a releasing holder unlinks it).
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_info(fd)
        if previous and self._still_running(previous):
            # The record lock is free but its holder runs here (a filesystem whose locks do nothing).
            os.close(fd)
            raise RunLockError(self._busy_message(previous))
        if previous:
            self.taken_over = (f"Took over the stale lock {self.path} of {describe_holder(previous)}: that process "
                               "no longer holds it (it was killed or crashed); check the folder's files.")
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
                     "command": self.command, "start_ticks": _process_start_ticks(os.getpid())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.info) + "\n").encode("utf-8"), 0)
        except OSError as exc:
            os.close(fd)
            raise WriteFailure(self.path, exc) from None
        self.fd = fd
        _HELD[key] = self
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD.pop(os.path.realpath(self.path), None)
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.remove(self.path)
        except OSError:
            pass
        os.close(fd)
        for folder in self.created_folders:   # deepest first; only empty ones: a start that wrote nothing
            try:                              # leaves no folder
                os.rmdir(folder)
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ messages
    def _still_running(self, info: dict) -> bool:
        """Whether the process named by ``info`` runs on this host (same pid and the same start time)."""
        if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
            return False
        pid = info["pid"]
        if pid == os.getpid() or not _alive(pid):
            return False
        ticks = info.get("start_ticks")
        return ticks is None or _process_start_ticks(pid) == ticks

    def _busy_message(self, holder: dict, same_process: bool = False) -> str:
        who = describe_holder(holder)
        if same_process:
            return (f"{self.what} {self.folder} is already in use by this process ({who}); "
                    f"one run per folder: {self.elsewhere}.")
        pid = holder.get("pid", "?")
        stop = f"stop it (kill {pid}) " if holder.get("host") == socket.gethostname() else "stop it "
        return (f"{self.what} {self.folder} is in use by another run: {who}. Wait for it to finish, {stop}"
                f"and try again, or {self.elsewhere}. (Lock file {self.path}; it is removed when that run ends.)")


def _missing_folders(folder: str) -> list[str]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _read_info(fd: int) -> dict:
    try:
        data = os.pread(fd, 65536, 0)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
