"""Temporary files for atomic writes: write a temporary file in the target's folder, then os.replace."""
from __future__ import annotations

import os
import tempfile


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

    mkstemp creates files 0600, and os.replace keeps the temporary file's mode: checkpoints and CSVs
    would end up unreadable to the rest of a shared machine's group. 0666 minus the umask instead.
    """
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.fchmod(fd, 0o666 & ~_process_umask())
    return fd, path
