"""The scan cache: one ``.npz`` per root holding the scanned tracklet records, so that a second start
walks the folders but lists no frames.

Keyed on the root, the name-reading option and every tracklet folder's mtime and inode change time;
a cache whose records are not exactly the folders walked at this start is refused (and rewritten).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Sequence

import numpy as np

from datasets.detreidx.frames import FrameNames, FramePaths
from datasets.detreidx.names import FrameNameInfo, parse_frame_name
from datasets.detreidx.scan import _is_hidden, _RawTracklet, _TrackletDir
from utils.fileio import atomic_write

logger = logging.getLogger(__name__)

SCAN_CACHE_VERSION = 3  # 2: NUL-joined frame names; 3: inode change times in the key, hidden frames left out
# The scan cache is written only when every folder is older than this: folder mtimes have a coarse
# clock (a few ms), so a folder changed again within the same tick would look unchanged (racy-git).
SCAN_CACHE_SETTLE_S = 2.0


def default_scan_cache_dir() -> str:
    """``$XDG_CACHE_HOME/sas_vpreid/scan`` (``~/.cache/...`` without it): where ``DATASETS.SCAN_CACHE_DIR auto`` points."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sas_vpreid", "scan")


def _cache_key(root: str, dirs: Sequence[_TrackletDir], unknown_as_ground: bool) -> str:
    """The root, the name-reading option, and every tracklet folder's part, path, mtime and inode change time.

    A frame added, removed or renamed changes its folder's mtime and ctime; a tool that restores the mtime
    afterwards (rsync -t, touch -r, tar) cannot set the ctime back, so the key still changes.
    """
    digest = hashlib.sha256(f"{SCAN_CACHE_VERSION}\0{root}\0{bool(unknown_as_ground)}".encode())
    for d in dirs:
        digest.update(f"\0{d.part}\0{d.path}\0{d.mtime_ns}\0{d.ctime_ns}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _cache_path(cache_dir: str, root: str) -> str:
    return os.path.join(cache_dir, f"scan-{hashlib.sha1(root.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}.npz")


def _save_scan_cache(path: str, key: str, root: str, raw: Sequence[_RawTracklet]) -> None:
    """One ``.npz`` (no pickles): the records as JSON bytes plus all frame numbers in one array."""
    records, arrays = [], []
    for t in raw:
        names = t.frames.names
        if names._joined is not None:
            frames = ["joined", names._joined]
        elif isinstance(names.numbers, range):
            frames = ["range", names.prefix, names.suffix, names.width, names.numbers.start, names.numbers.stop, names.numbers.step]
        else:
            frames = ["array", names.prefix, names.suffix, names.width, len(names.numbers)]
            arrays.append(np.asarray(names.numbers, np.int64))
        info = t.info
        records.append([os.path.relpath(t.frames.folder, root), t.pid, t.name, t.part, t.view, frames,
                        [info.scheme, info.view, info.pid_token, info.session, info.height, info.distance, info.angle,
                         info.num_tokens]])
    meta = json.dumps({"version": SCAN_CACHE_VERSION, "key": key, "root": root, "tracklets": records}).encode("utf-8", "surrogateescape")
    numbers = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, meta=np.frombuffer(meta, dtype=np.uint8), numbers=numbers)

    atomic_write(path, write)   # a temp name that remove_stale_temp_files knows


class _CacheMismatch(ValueError):
    """A scan cache whose records do not describe the folders walked at this start."""


def _plain_name_part(text: str) -> bool:
    """A frame-name template part or name holds no folder separator (a cached name cannot leave its folder)."""
    return os.sep not in text and (os.altsep is None or os.altsep not in text) and "\0" not in text


def _checked_frame_names(names: FrameNames, folder: str) -> FrameNames:
    parts = list(names) if names._joined is not None else [names.prefix, names.suffix]
    bad = next((n for n in parts if not _plain_name_part(n) or (n is not names.suffix and _is_hidden(n))), None)
    if bad is not None:
        raise _CacheMismatch(f"the frame name (part) {bad!r} in {folder!r} is not a plain, visible file name")
    return names


def _load_scan_cache(path: str, key: str, root: str, dirs: Sequence[_TrackletDir] = (),
                     unknown_as_ground: bool = False) -> list[_RawTracklet] | None:
    """The cached records when the file exists, its key matches and its records are exactly the tracklet
    folders ``dirs`` walked at this start (so a hand-edited path such as ``../../etc`` is refused), each with
    what its first frame name says (re-read: one parse per tracklet), else None (any damage or mismatch: a
    rescan, with a warning naming the file)."""
    if not os.path.isfile(path):
        return None
    walked = {d.path: d for d in dirs}
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode("utf-8", "surrogateescape"))
            if meta.get("version") != SCAN_CACHE_VERSION or meta.get("key") != key or meta.get("root") != root:
                return None
            numbers = data["numbers"]
        if len(meta["tracklets"]) != len(walked):
            raise _CacheMismatch(f"it lists {len(meta['tracklets'])} tracklet folders, the walk found {len(walked)}")
        raw, offset = [], 0
        for rel, pid, name, part, view, frames, info in meta["tracklets"]:
            folder = os.path.normpath(os.path.join(root, rel))
            if os.path.isabs(rel) or os.path.commonpath([root, folder]) != root:
                raise _CacheMismatch(f"it lists the tracklet folder {rel!r}, outside the root {root}")
            found = walked.get(folder)
            if found is None or (found.pid, found.name, found.part) != (pid, name, part):
                raise _CacheMismatch(f"it lists {rel!r} (PID {pid}, name {name!r}), which the walk did not find")
            if view not in ("aerial", "ground"):
                raise _CacheMismatch(f"it gives {rel!r} the view {view!r}")
            kind = frames[0]
            if kind == "joined":
                names = FrameNames(joined=frames[1])
            elif kind == "range":
                names = FrameNames(frames[1], frames[2], frames[3], range(frames[4], frames[5], frames[6]))
            else:
                count = frames[4]
                chunk = numbers[offset:offset + count]
                offset += count
                if len(chunk) and chunk.min() >= 0 and chunk.max() < 2**31:
                    chunk = chunk.astype(np.int32)
                names = FrameNames(frames[1], frames[2], frames[3], np.array(chunk))
            names = _checked_frame_names(names, folder)
            if not len(names):
                raise _CacheMismatch(f"it lists no frames for {rel!r}")
            info = FrameNameInfo(*info)
            try:
                read = parse_frame_name(os.path.join(folder, names[0]), unknown_as_ground)
            except ValueError as exc:
                raise _CacheMismatch(f"its frame name for {rel!r} cannot be read ({exc})") from None
            if read != info:
                raise _CacheMismatch(f"it says {info} of {rel!r}, whose first frame name says {read}")
            raw.append(_RawTracklet(FramePaths(folder, names), pid, name, part, info, view))
        return raw
    except _CacheMismatch as exc:
        logger.warning("Refusing the scan cache %s: %s. Scanning the folders (the cache is rewritten; delete the "
                       "file if it was edited by hand)", path, exc)
        return None
    except Exception as exc:  # noqa: BLE001  (any damage of a cache file, zip errors included, means: scan again)
        logger.warning("Ignoring the unreadable scan cache %s (%s); scanning the folders", path, exc)
        return None


# Root -> scan cache file of the DetReIDX objects of this process (inherited by forked loader workers), so
# that a frame missing at read time can name the cache that listed it.
_SCAN_CACHE_FILES: dict[str, str] = {}


def missing_frame_message(path: str) -> str:
    """The one-line error for a frame the index lists but the disk no longer holds: names the scan cache
    that may have listed it and how to clear it."""
    path = os.fspath(path)
    absolute = os.path.abspath(path)
    cache = next((f for r, f in _SCAN_CACHE_FILES.items() if absolute.startswith(r.rstrip(os.sep) + os.sep)), None)
    where = f"delete the scan cache file {cache}" if cache else \
        f"delete the scan cache folder (DATASETS.SCAN_CACHE_DIR; 'auto' is {default_scan_cache_dir()})"
    return (f"Frame {path} does not exist: it was renamed or removed after its folder was listed. If a stale "
            f"scan cache listed it, {where} or set DATASETS.SCAN_CACHE_DIR '' and start again; else copy it back.")

