"""File-system helpers: hashes and snapshots to prove that nothing changed, ages and restored mtimes to fool
caches the way copying tools do."""
from __future__ import annotations

import hashlib
import os
import time


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def snapshot(folder: str, skip=("eval",)) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under ``folder``, outside its top-level folders ``skip``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if os.path.relpath(dirpath, folder) == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            found[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


def age_tree(root: str, seconds: float = 60.0) -> None:
    """Make every folder under ``root`` look ``seconds`` old (the scan cache is only written for settled trees)."""
    stamp = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (stamp, stamp))


def restore_mtime_after(path: str, change) -> None:
    """Run ``change()`` and set ``path``'s mtime back, as rsync -t, touch -r or tar do. Repeats until the inode
    change time really moved (a coarse clock can leave it in the same tick), so ``change`` must be idempotent."""
    before = os.stat(path)
    while True:
        change()
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if os.stat(path).st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.01)
