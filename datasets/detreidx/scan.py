"""The scanner: walks the PID and tracklet folders of a DetReIDX root, lists and reads each tracklet's
frames, and sums up what it understood of the names.

Hidden files and folders (``.*``, e.g. macOS ``._frame.jpg``) are skipped; PID or tracklet folders that
cannot be read (permissions, symbolic links that loop or point nowhere) stop the scan with one message
listing them, and so do tracklet folder names that cannot name a submission row. The view of a
tracklet is fixed by its case folder (each case's query and gallery hold one view); in ``train/`` it
comes from the name. What parses but looks wrong is reported (:class:`ScanSummary`): names longer than
any ground scheme that are not outdoor-shaped (read as ground), and capture points that are none of
DetReIDX's 18 (a dropped or extra field shifts the values).
"""
from __future__ import annotations

import errno
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from datasets.detreidx.frames import FrameNames, FramePaths
from datasets.detreidx.names import (
    _CAPTURE_POINT_SET, GROUND_MAX_TOKENS, FrameNameInfo, camera_key, non_ascii_digit, parse_frame_name,
)
from utils.protocol import EXPECTED_LAYOUT, FRAME_EXTENSIONS, csv_unsafe_reason, is_ascii_int, split_tracklet_name

# Folder problems named one by one in a scan error; the count says how many more there are.
MAX_LISTED_FOLDERS = 10


class DatasetLayoutError(ValueError):
    """The dataset folder does not follow the DetReIDX layout; the message names the path and the fix."""


@dataclass(frozen=True)
class _Part:
    """One scanned folder of PID folders: ``train`` or one case's query/gallery."""

    label: str                      # "train" or "<case folder>/<query|gallery>"
    path: str
    fixed_view: str | None          # the view its case folder fixes; None in train/
    case: int | None = None
    role: str | None = None         # "query" | "gallery"


@dataclass(frozen=True)
class _TrackletDir:
    path: str
    pid: int
    name: str
    part: int                       # index into the scan's parts
    mtime_ns: int
    ctime_ns: int = 0               # inode change time: tools that restore mtimes cannot set it back


@dataclass
class _RawTracklet:
    """A scanned tracklet before camera ids are known."""

    frames: FramePaths
    pid: int
    name: str
    part: int
    info: FrameNameInfo
    view: str                       # the case folder's view where it fixes one, else the name's

    @property
    def session(self) -> str | None:
        return self.info.session if self.view == "aerial" else None

    @property
    def camera_key(self) -> str:
        return camera_key(self.view, self.session)


def _is_hidden(name: str) -> bool:
    """Hidden entries (``.DS_Store``, macOS resource forks ``._frame.jpg``, ``.git``) are never data."""
    return name.startswith(".")


def _list_subfolders(path: str, unusable: list[tuple[str, str]]) -> list[os.DirEntry]:
    """The visible subfolders of ``path``, sorted. A symbolic link that loops or points nowhere is added
    to ``unusable`` as (path, reason) instead of being skipped without a word."""
    folders = []
    with os.scandir(path) as entries:
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            try:
                if entry.is_dir():
                    folders.append(entry)
                    continue
                if not entry.is_symlink():
                    continue            # a stray file next to the folders
                os.stat(entry.path)
            except OSError as exc:
                if entry.is_symlink():
                    why = "loops" if exc.errno == errno.ELOOP else "points nowhere"
                    unusable.append((entry.path, f"is a symbolic link that {why} ({exc.strerror})"))
                else:
                    unusable.append((entry.path, f"cannot be read ({exc.strerror or exc})"))
    return sorted(folders, key=lambda e: e.name)


def _list_frame_names(folder: str) -> list[str]:
    """The frame file names in ``folder`` (unsorted; hidden files such as macOS ``._frame.jpg`` left out).
    One place, so a benchmark can stand in memory for disk."""
    with os.scandir(folder) as entries:
        return [e.name for e in entries
                if e.name.lower().endswith(FRAME_EXTENSIONS) and not _is_hidden(e.name) and e.is_file()]


def _pid_from_folder(entry: os.DirEntry, parent: str) -> int:
    if not is_ascii_int(entry.name):
        bad_digit = non_ascii_digit(entry.name)
        why = (f"contains the non-ASCII digit {bad_digit!r} (only ASCII digits 0-9 count)" if bad_digit is not None
               else "is not an integer")
        raise DatasetLayoutError(
            f"PID folder {entry.path!r} {why}. DetReIDX PID folders are integers such as 0004; "
            f"rename the folder or move it out of {parent!r}. {EXPECTED_LAYOUT}"
        )
    return int(entry.name)


def _unusable_tracklet_name(name: str, junk_rule: str) -> str | None:
    """Why a tracklet folder name cannot serve as a submission row, or None."""
    bad_digit = non_ascii_digit(name)
    if bad_digit is not None:
        return f"contains the non-ASCII digit {bad_digit!r}"
    reason = csv_unsafe_reason(name)
    if reason is not None:
        return reason
    if junk_rule == "tracklet":
        try:
            split_tracklet_name(name)
        except ValueError:
            return "is not {pid}_{tid} with integer pid and tid (needed by TEST.JUNK_RULE tracklet)"
    return None


def _walk_folders(parts: Sequence[_Part], junk_rule: str) -> list[_TrackletDir]:
    """PID and tracklet folders of every part (no frame listing); checks PID folders and tracklet names.

    Tracklet names that cannot go into the submission CSV stop the scan with one message for all of them.
    """
    found: list[_TrackletDir] = []
    unusable: list[tuple[str, str]] = []
    unreadable: list[tuple[str, str]] = []
    for index, part in enumerate(parts):
        for pid_entry in _list_subfolders(part.path, unreadable):
            pid = _pid_from_folder(pid_entry, part.path)
            try:
                tracklet_entries = _list_subfolders(pid_entry.path, unreadable)
            except OSError as exc:
                unreadable.append((pid_entry.path, f"cannot be listed ({exc.strerror or exc})"))
                continue
            for entry in tracklet_entries:
                reason = _unusable_tracklet_name(entry.name, junk_rule)
                if reason is not None:
                    unusable.append((entry.path, reason))
                if not os.access(entry.path, os.R_OK | os.X_OK):
                    unreadable.append((entry.path, "cannot be read (no read/enter permission)"))
                    continue
                stat = entry.stat()
                found.append(_TrackletDir(entry.path, pid, entry.name, index, stat.st_mtime_ns, stat.st_ctime_ns))
    if unreadable:
        raise _folder_problems_error(
            unreadable, "PID or tracklet folder(s) cannot be read, so their tracklets would be missing from training "
            "and from the submission", "Fix the links or the permissions (chmod -R u+rX), or move these folders out "
            "of the dataset root.")
    if unusable:
        raise _folder_problems_error(
            unusable, "tracklet folder name(s) cannot go into the submission CSV (rows are named after tracklet "
            "folders; no whitespace, comma or quote; {pid}_{tid} with integer ids under TEST.JUNK_RULE tracklet)",
            "Rename them before training.")
    return found


def _folder_problems_error(problems: Sequence[tuple[str, str]], what: str, fix: str) -> DatasetLayoutError:
    """One error for every (path, reason) in ``problems``: how many ``what``, the first
    MAX_LISTED_FOLDERS of them with their reasons, then the ``fix``."""
    shown = problems[:MAX_LISTED_FOLDERS]
    listed = "; ".join(f"{path!r} {reason}" for path, reason in shown)
    return DatasetLayoutError(f"{len(problems)} {what}. First {len(shown)}: {listed}. {fix}")


def _scan_tracklet(folder: str, unknown_as_ground: bool) -> tuple[FramePaths, FrameNameInfo]:
    """List, compact and read one tracklet folder: one name parsed, plus the last one as a consistency check."""
    try:
        names = _list_frame_names(folder)
    except OSError as exc:
        raise DatasetLayoutError(
            f"Tracklet folder {folder!r} cannot be listed ({exc.strerror or exc}). Fix its permissions "
            f"(chmod -R u+rX) or move it out of the dataset root."
        ) from None
    if not names:
        raise DatasetLayoutError(
            f"Tracklet folder {folder!r} holds no frames ({'/'.join(FRAME_EXTENSIONS)} files). "
            f"Remove the empty folder or copy its frames back."
        )
    frame_names = FrameNames.from_names(names)
    try:
        if frame_names._joined is None:
            # One template: every name shares the prefix and suffix, only the frame number varies.
            info = parse_frame_name(os.path.join(folder, frame_names[0]), unknown_as_ground)
            last = parse_frame_name(os.path.join(folder, frame_names[-1]), unknown_as_ground)
            if replace(last, num_tokens=info.num_tokens) != info:
                raise DatasetLayoutError(
                    f"Tracklet folder {folder!r}: its frame names say different things (first and last: "
                    f"{frame_names[0]!r}: {info}; {frame_names[-1]!r}: {last}). Split it into one tracklet per camera."
                )
        else:
            info = _read_mixed_names(folder, frame_names, unknown_as_ground)
    except DatasetLayoutError:
        raise
    except ValueError as exc:
        raise DatasetLayoutError(str(exc)) from None
    return FramePaths(folder, frame_names), info


def _read_mixed_names(folder: str, frame_names: FrameNames, unknown_as_ground: bool) -> FrameNameInfo:
    """Names that fit no single template: read each distinct prefix (all but the last token) once."""
    infos: dict[str, FrameNameInfo] = {}
    for name in frame_names:
        prefix = os.path.splitext(name)[0].rpartition("_")[0] or name
        if prefix not in infos:
            infos[prefix] = parse_frame_name(os.path.join(folder, name), unknown_as_ground)
    first_prefix = next(iter(infos))
    first = infos[first_prefix]
    for prefix, info in infos.items():
        if info.view != first.view:
            raise DatasetLayoutError(f"Tracklet folder {folder!r} mixes aerial and ground frame names "
                                     f"({first_prefix!r}..., {prefix!r}...). Split it into one tracklet per camera.")
        if replace(info, num_tokens=first.num_tokens) != first:
            raise DatasetLayoutError(
                f"Tracklet folder {folder!r}: its frame names say different things ({first_prefix!r}...: {first}; "
                f"{prefix!r}...: {info}). Split it into one tracklet per camera."
            )
    return first


def _check_unique_names(tracklets: Iterable[_RawTracklet], where: str) -> None:
    first_seen: dict[str, _RawTracklet] = {}
    for tracklet in tracklets:
        other = first_seen.setdefault(tracklet.name, tracklet)
        if other is not tracklet and other.pid != tracklet.pid:
            raise DatasetLayoutError(
                f"Tracklet name {tracklet.name!r} occurs under two PIDs in {where}: "
                f"{other.frames.folder} and {tracklet.frames.folder}. "
                f"Tracklet names identify rows of the submission; rename one of them."
            )


def _check_folder(path: str, what: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise DatasetLayoutError(f"Missing {what}: {path}. {fix}")


@dataclass
class ScanSummary:
    """What the scanner understood of the names (the "understood" lines of the statistics table)."""

    shapes: dict[str, Counter] = field(default_factory=dict)      # part label -> tokens per name -> tracklets
    no_session: list[str] = field(default_factory=list)          # aerial tracklet folders without a readable session
    pid_mismatch: list[str] = field(default_factory=list)        # folders whose names' PID token differs from the PID folder
    view_mismatch: list[str] = field(default_factory=list)       # folders whose names' view differs from their case folder
    not_outdoor_shaped: list[str] = field(default_factory=list)  # names longer than any ground scheme, read as ground
    odd_capture_point: list[str] = field(default_factory=list)   # outdoor names whose h/d/angle is no DetReIDX point
    from_cache: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = ["what the scanner understood:"]
        for label, shapes in self.shapes.items():
            listed = ", ".join(f"{tokens} tokens x {count}" for tokens, count in sorted(shapes.items()))
            out.append(f"  name shapes in {label}: {listed or 'no tracklets'} (tracklets)")
        out += [f"  {line}" for _, line in self.anomalies()]
        out.append(f"  scan: {'from the scan cache' if self.from_cache else 'folders walked'} in {self.seconds:.2f} s")
        return out

    def anomalies(self) -> list[tuple[int, str]]:
        """(count, line) for each kind of name anomaly, found or not (a count of 0)."""
        found = []
        for what, folders in (("aerial tracklets without a readable session (own camera 'aerial-unknown')", self.no_session),
                              ("tracklets whose names' PID token disagrees with their PID folder", self.pid_mismatch),
                              ("tracklets whose names' view disagrees with their case folder (folder wins)", self.view_mismatch),
                              (f"tracklets whose names are outdoor-length (more than {GROUND_MAX_TOKENS} tokens) but not "
                               f"outdoor-shaped (PID_DD_MM_YYYY_HH_MM_...), so read as ground: check for an extra or "
                               f"missing token", self.not_outdoor_shaped),
                              ("aerial tracklets whose height/distance/angle is none of DetReIDX's 18 capture points "
                               "(a dropped or extra field shifts the values)", self.odd_capture_point)):
            examples = f", e.g. {', '.join(repr(f) for f in folders[:3])}" if folders else ""
            found.append((len(folders), f"{what}: {len(folders)}{examples}"))
        return found


def _summarise(parts: Sequence[_Part], raw: Sequence[_RawTracklet]) -> ScanSummary:
    summary = ScanSummary(shapes={part.label: Counter() for part in parts})
    for t in raw:
        part = parts[t.part]
        info = t.info
        summary.shapes[part.label][info.num_tokens] += 1
        folder = t.frames.folder
        if t.view == "aerial" and t.session is None:
            summary.no_session.append(folder)
        if info.pid_token is not None and (not is_ascii_int(info.pid_token) or int(info.pid_token) != t.pid):
            summary.pid_mismatch.append(folder)
        if part.fixed_view is not None and info.scheme != "unknown" and info.view != part.fixed_view:
            summary.view_mismatch.append(folder)
        if info.scheme != "outdoor" and info.num_tokens > GROUND_MAX_TOKENS:
            summary.not_outdoor_shaped.append(folder)
        if info.scheme == "outdoor" and (info.height, info.distance, info.angle) not in _CAPTURE_POINT_SET:
            summary.odd_capture_point.append(folder)
    return summary

