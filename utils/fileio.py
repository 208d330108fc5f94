"""Every file the project writes goes through here: atomic writes (a temporary file in the target's
folder, then os.replace), the usual file mode, one error type for failed writes, and the cleanup
of temporary files that killed writers left behind.

A failed write (disk full, read-only filesystem, no permission, ...) raises ``WriteFailure``, an
``OSError`` whose message is one line naming the file and the cause; the file's previous version
is intact and the temporary file is removed. ``train.py`` and ``evaluate_all_cases.py`` print that
line and exit non-zero instead of showing a traceback.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from typing import Callable

logger = logging.getLogger(__name__)

# Temporary files this project writes, by name. ``atomic_write`` names them ``.<final name>.<8 random
# characters of mkstemp>.tmp``; the other patterns are the names older versions used (plots, rank
# lists, CSV, scores JSON), so that their leftovers are cleaned too.
TEMP_FILE_PATTERNS = (
    re.compile(r"\..+\.[a-z0-9_]{8}\.tmp"),
    re.compile(r"\.(?:plot|ranklist|submission|scores)-[a-z0-9_]{8}\.(?:png|csv|json)\.tmp"),
)

# Hints for the usual causes; any other OSError still gets its own description.
_HINTS = {
    errno.ENOSPC: "free some space or point OUTPUT_DIR at a larger disk",
    errno.EDQUOT: "free some space or point OUTPUT_DIR at a larger disk",
    errno.EROFS: "point OUTPUT_DIR (or the output path) at a writable location",
    errno.EACCES: "fix the folder's permissions or point OUTPUT_DIR at a writable location",
    errno.EPERM: "fix the folder's permissions or point OUTPUT_DIR at a writable location",
}


class WriteFailure(OSError):
    """A file could not be written. ``str()`` is one line: the path, the cause and what to do;
    files written before are intact (writes are atomic)."""

    def __init__(self, path: str, cause: OSError):
        code = cause.errno if isinstance(cause, OSError) else None
        reason = (cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)) or type(cause).__name__
        if code in errno.errorcode:
            reason = f"{reason} ({errno.errorcode[code]})"
        super().__init__(code, reason)
        self.path = path
        self.cause = cause
        hint = _HINTS.get(code, "check the disk and the folder's permissions")
        self.message = f"cannot write {path!r}: {reason}; {hint}. Files written before are intact."

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable (DDP / worker processes pass exceptions around)
        return (type(self), (self.path, self.cause))


def _process_umask() -> int:
    """The process umask, read from /proc where possible: os.umask can only read it by changing it,
    which races with other threads creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_file(folder: str, prefix: str, suffix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder`` -> (open fd, path), with the mode a plain ``open`` would give.

    mkstemp creates files 0600, and os.replace keeps the temporary file's mode: checkpoints, CSVs
    and plots would end up unreadable to the rest of a shared machine's group. 0666 minus the umask.
    """
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.fchmod(fd, 0o666 & ~_process_umask())
    return fd, path


def ensure_folder(folder: str) -> None:
    """``os.makedirs(folder, exist_ok=True)``; a failure is a WriteFailure naming the folder."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise WriteFailure(folder, exc) from None


class RecordingWriter:
    """A binary file opened for writing that remembers the first OSError of a write.

    torch.save turns the OSError of a full disk into ``RuntimeError: ... unexpected pos``; on leaving
    the ``with`` block the recorded OSError is raised instead, so the cause is not lost.
    """

    def __init__(self, path: str, mode: str = "wb"):
        self._file = open(path, mode)
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
        except OSError as close_error:
            if exc is None:
                raise
            self.error = self.error or close_error
        if exc is not None and self.error is not None and exc is not self.error:
            raise self.error from None


def atomic_write(path: str, write_fn: Callable[[str], None]) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``: a crash never leaves a half file there.

    The temporary file lives in ``path``'s folder (so the rename is atomic) and is named
    ``.<name>.XXXXXXXX.tmp`` (see TEMP_FILE_PATTERNS). Its data is fsynced before the rename. Any
    OSError (full disk, read-only filesystem, no permission) becomes a WriteFailure naming ``path``;
    other exceptions pass unchanged. Either way the temporary file is removed and ``path`` keeps its
    previous content.
    """
    folder = os.path.dirname(os.path.abspath(path))
    ensure_folder(folder)
    try:
        fd, tmp = make_temp_file(folder, "." + os.path.basename(path) + ".", ".tmp")
    except OSError as exc:
        raise WriteFailure(path, exc) from None
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())   # data on disk before the rename, or a power cut can leave an empty file
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailure):
            raise WriteFailure(path, exc) from None
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see atomic_write)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see atomic_write)."""
    def write(tmp: str) -> None:
        with RecordingWriter(tmp) as f:
            f.write(data)

    atomic_write(path, write)


def _is_temp_name(name: str) -> bool:
    return any(pattern.fullmatch(name) for pattern in TEMP_FILE_PATTERNS)


def remove_stale_temp_files(folder: str, depth: int = 1) -> list[str]:
    """Delete the temporary files of killed writes (TEMP_FILE_PATTERNS) in ``folder`` and in its
    sub-folders down to ``depth`` levels (rank-list pictures live one level down); returns their paths.

    A checkpoint's temporary file is as large as a checkpoint, so a run killed again and again would
    fill the disk. Only for the start of a run or a resume, when nothing else writes there.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > 0:
                    removed += remove_stale_temp_files(entry.path, depth - 1)
                continue
            if not (entry.is_file(follow_symlinks=False) and _is_temp_name(entry.name)):
                continue
            size = entry.stat(follow_symlinks=False).st_size
            os.remove(entry.path)
        except FileNotFoundError:  # another rank of the same resumed run removed it first
            continue
        removed.append(entry.path)
        logger.warning("Removed %s (%.1f MiB), the temporary file of a write that was killed",
                       entry.path, size / 2**20)
    return removed
