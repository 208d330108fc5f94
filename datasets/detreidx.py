"""DetReIDX(V1) layout: frame-name parser, compact tracklet records, scanner (with a scan cache), splits
and a statistics table.

Layout on disk::

    ROOT/train/<PID>/<tracklet>/*.jpg
    ROOT/case1_aerial_to_ground/{query,gallery}/<PID>/<tracklet>/*.jpg
    ROOT/case2_ground_to_aerial/{query,gallery}/<PID>/<tracklet>/*.jpg
    ROOT/case3_aerial_to_aerial/{query,gallery}/<PID>/<tracklet>/*.jpg

Frame names (fields split on ``_``):

* outdoor / aerial (soft-biometric scheme)::

    PID_DD_MM_YYYY_HH_MM_Height_Distance_Angle_Location_HairColor_HairStyle_Beard_Moustache_
    Glasses_HeadAccessories_UpperBodyCloths_LowerBodyCloths_Feet_Accessories_Action_DroneScene_
    Session[_Frame]

  height / distance / angle are fields 6 / 7 / 8 (metres, metres, pitch degrees 0-90). The session
  is ``S1``, ``s1`` or ``1``, read (as the authors' loader does) from the token just before the
  frame number, or else from field 22.
* ground: any other name whose first token is an integer (PID), e.g. the authors' short form
  ``PID_..._Frame`` with fewer than 8 tokens, or ``PID_Gender_Age_Height_Weight_Ethnicity_Angle_View_Frame``.

A name that starts like the outdoor scheme (integer PID, then a date and a time) is checked, not
guessed: an impossible date or time, or a height / distance / angle that is not a plain
non-negative decimal (NaN, inf, negative) within its physical range (height 0-500 m, horizontal
distance 0-1000 m, pitch 0-90 degrees), is an error naming the file and the field.
Only ASCII digits count as digits anywhere a number is read. What parses but looks wrong is reported
by the scan (warning lines and the statistics table): names longer than any ground scheme that are
not outdoor-shaped (read as ground), and capture points that are none of DetReIDX's 18 (a dropped or
extra field shifts the values). Hidden files and folders (``.*``, e.g. macOS ``._frame.jpg``) are
skipped; PID or tracklet folders that cannot be read (permissions, symbolic links that loop or point
nowhere) stop the scan with one message listing them.

The view of a tracklet is fixed by its case folder (each case's query and gallery hold one view);
in ``train/`` it comes from the name. Ground is camera 0 and aerial session ``n`` camera ``n`` (in
sorted order); the camera count comes from the data.

Run ``python -m datasets.detreidx --root DIR`` to print the statistics table of a root, including
what the scanner understood of the names.
"""
from __future__ import annotations

import argparse
import calendar
import errno
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import numpy as np

from datasets.registry import register_dataset
from utils.fileio import atomic_write
from utils.protocol import (  # noqa: F401  (re-exported: the protocol lives in utils.protocol)
    CASE_FOLDERS, CASE_NAMES, CASE_PARTS, CASE_VIEWS, EXPECTED_LAYOUT, FRAME_EXTENSIONS, JUNK_RULES,
    TRAIN_FOLDER, csv_unsafe_reason, is_ascii_int, natural_sort_key, split_tracklet_name, submission_row_key,
)

logger = logging.getLogger(__name__)


# The 18 drone capture points of DetReIDX: (height m, horizontal distance m, pitch degrees).
CAPTURE_POINTS: tuple[tuple[float, float, float], ...] = (
    (5.8, 10, 30), (11.5, 20, 30), (17.3, 30, 30), (23.1, 40, 30), (40, 80, 30), (60, 120, 30),
    (15, 10, 60), (30, 20, 60), (45, 30, 60), (60, 40, 60), (75, 80, 60), (90, 120, 60),
    (10, 0, 90), (20, 0, 90), (30, 0, 90), (40, 0, 90), (80, 0, 90), (120, 0, 90),
)

_CAPTURE_POINT_SET = frozenset((float(h), float(d), float(a)) for h, d, a in CAPTURE_POINTS)

OUTDOOR_MIN_FIELDS = 9       # PID, date (3), time (2), height, distance, angle
OUTDOOR_SESSION_FIELD = 22
# The authors' loader: a frame name of fewer than 8 tokens is a ground frame.
AUTHORS_GROUND_MAX_TOKENS = 7
OUTDOOR_FIELDS = ("PID", "day", "month", "year", "hour", "minute", "height", "distance", "angle")
MAX_PITCH_DEG = 90.0
# Physical ranges of the capture geometry. DetReIDX flies at 5.8-120 m and 0-120 m away; a person cannot be
# re-identified from much higher or farther (and drones may not legally fly above ~120 m), so a name outside
# these ranges is a broken name (a shifted field, a typo such as 1000 for 10.00), never data.
MAX_HEIGHT_M = 500.0
MAX_DISTANCE_M = 1000.0
# Ground schemes have at most 9 tokens (``PID_Gender_Age_Height_Weight_Ethnicity_Angle_View_Frame``); a longer
# name read as ground is an outdoor-length name that is not outdoor-shaped (an extra or missing token in its
# date/time): the scan reports such tracklets.
GROUND_MAX_TOKENS = 9
_SESSION_RE = re.compile(r"[Ss]?([1-9])")  # sessions are single digits: a frame number never reads as one
_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DATE_SHAPES = (re.compile(r"[0-9]{1,2}"), re.compile(r"[0-9]{1,2}"), re.compile(r"[0-9]{4}"),
                re.compile(r"[0-9]{1,2}"), re.compile(r"[0-9]{1,2}"))
SCAN_CACHE_VERSION = 3  # 2: NUL-joined frame names; 3: inode change times in the key, hidden frames left out
# The scan cache is written only when every folder is older than this: folder mtimes have a coarse
# clock (a few ms), so a folder changed again within the same tick would look unchanged (racy-git).
SCAN_CACHE_SETTLE_S = 2.0


class DatasetLayoutError(ValueError):
    """The dataset folder does not follow the DetReIDX layout; the message names the path and the fix."""


def non_ascii_digit(text: str) -> str | None:
    """The first character of ``text`` that Python reads as a digit but is not ASCII (``'²'``), or None."""
    if text.isascii():
        return None
    return next((c for c in text if c.isnumeric() and not c.isascii()), None)


# ----------------------------------------------------------------------------- frame names
@dataclass(frozen=True)
class FrameNameInfo:
    """What a frame file name says about its tracklet."""

    scheme: str                 # "outdoor" | "ground" | "unknown"
    view: str                   # "aerial" | "ground" (what the name says; a case folder may override it)
    pid_token: str | None       # field 0 as written (may differ from the PID folder in anonymised sets)
    session: str | None         # "S1", "S2", ... (outdoor scheme, when readable) or None
    height: float | None        # drone altitude in metres (outdoor scheme)
    distance: float | None      # horizontal distance in metres (outdoor scheme)
    angle: float | None         # pitch in degrees, 0-90 (outdoor scheme)
    num_tokens: int = 0         # ``_``-separated tokens of the stem (the name's shape)

    @property
    def aerial_distance(self) -> float | None:
        if self.height is None or self.distance is None:
            return None
        return math.hypot(self.height, self.distance)


def _starts_like_outdoor(tokens: Sequence[str]) -> bool:
    """PID, then something shaped like DD_MM_YYYY_HH_MM (at least 3 of its 5 tokens), and enough tokens
    that the authors' loader would call it aerial. The ground scheme's letter gender token at field 1
    never starts a date."""
    if len(tokens) <= AUTHORS_GROUND_MAX_TOKENS or not is_ascii_int(tokens[0]) or tokens[1].isalpha():
        return False
    return sum(shape.fullmatch(t) is not None for shape, t in zip(_DATE_SHAPES, tokens[1:6])) >= 3


def _field_error(path: str, index: int, token: str, why: str) -> ValueError:
    return ValueError(
        f"Frame name {path!r}: field {index} ({OUTDOOR_FIELDS[index]}) {token!r} {why}. The name starts like the "
        f"outdoor scheme PID_DD_MM_YYYY_HH_MM_Height_Distance_Angle_..._Session_Frame; fix or remove the file."
    )


def _read_outdoor(path: str, tokens: Sequence[str]) -> tuple[float, float, float]:
    """Check the date, time, height, distance and angle of an outdoor-scheme name; (h, d, angle)."""
    for index in range(1, 6):
        if _DATE_SHAPES[index - 1].fullmatch(tokens[index]) is None:
            raise _field_error(path, index, tokens[index], "is not a number of the expected digits (ASCII only)")
    day, month, year, hour, minute = (int(t) for t in tokens[1:6])
    if year < 1:
        raise _field_error(path, 3, tokens[3], "is not a year")
    if not 1 <= month <= 12:
        raise _field_error(path, 2, tokens[2], "is not a month (1-12)")
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise _field_error(path, 1, tokens[1], f"is not a day of {month:02d}/{year:04d} (impossible date)")
    if hour > 23:
        raise _field_error(path, 4, tokens[4], "is not an hour (0-23)")
    if minute > 59:
        raise _field_error(path, 5, tokens[5], "is not a minute (0-59)")
    if len(tokens) < OUTDOOR_MIN_FIELDS:
        missing = OUTDOOR_FIELDS[len(tokens)]
        raise ValueError(f"Frame name {path!r}: field {len(tokens)} ({missing}) is missing; the name starts like the "
                         f"outdoor scheme PID_DD_MM_YYYY_HH_MM_Height_Distance_Angle_..., fix or remove the file.")
    values = []
    for index in (6, 7, 8):
        token = tokens[index]
        if _DECIMAL_RE.fullmatch(token) is None:
            raise _field_error(path, index, token, "is not a non-negative decimal number such as 5.8 "
                               "(NaN, inf, signs, exponents and non-ASCII digits are refused)")
        values.append(float(token))
    if values[0] > MAX_HEIGHT_M:
        raise _field_error(path, 6, tokens[6], f"is not a physical drone height (0-{MAX_HEIGHT_M:g} m); a dropped or "
                           f"extra field shifts the values")
    if values[1] > MAX_DISTANCE_M:
        raise _field_error(path, 7, tokens[7], f"is not a physical horizontal distance (0-{MAX_DISTANCE_M:g} m); a "
                           f"dropped or extra field shifts the values")
    if values[2] > MAX_PITCH_DEG:
        raise _field_error(path, 8, tokens[8], "is not a pitch between 0 and 90 degrees")
    return values[0], values[1], values[2]


def _read_session(tokens: Sequence[str]) -> str | None:
    """``S1``/``s1``/``1`` -> "S1": the token before the frame number (the authors' rule), else field 22.

    A name of exactly 23 tokens is ambiguous: field 22 is either the session itself (no frame number)
    or, with one soft-biometric field missing, the frame number. Field 22 is tried first there; an
    explicit ``S<n>`` wins over a bare integer anywhere, and sessions are single digits 1-9, so a
    frame number such as ``00010`` is never read as a session.
    """
    before_frame = [tokens[-2]] if len(tokens) > OUTDOOR_MIN_FIELDS + 1 and is_ascii_int(tokens[-1]) else []
    field_22 = [tokens[OUTDOOR_SESSION_FIELD]] if len(tokens) > OUTDOOR_SESSION_FIELD else []
    candidates = field_22 + before_frame if len(tokens) == OUTDOOR_SESSION_FIELD + 1 else before_frame + field_22
    candidates.sort(key=lambda token: token[:1] not in ("S", "s"))   # stable: explicit S<n> first
    for token in candidates:
        match = _SESSION_RE.fullmatch(token)
        if match:
            return f"S{int(match.group(1))}"
    return None


def parse_frame_name(name: str, unknown_as_ground: bool = False) -> FrameNameInfo:
    """Parse a frame file name (with or without folder and extension).

    Outdoor-scheme names are checked field by field; any other name whose first token is an ASCII
    integer is a ground frame. Raises ``ValueError`` naming the file (and the field) when the name
    cannot be read; a name that fits no scheme is a ground frame of scheme "unknown" instead when
    ``unknown_as_ground`` (config ``DATASETS.UNKNOWN_NAMES_AS_GROUND``).
    """
    stem = os.path.splitext(os.path.basename(name))[0]
    bad_digit = non_ascii_digit(stem)
    if bad_digit is not None:
        raise ValueError(f"Frame name {name!r} contains the non-ASCII digit {bad_digit!r}; numbers in names must use "
                         f"ASCII digits 0-9. Rename the file.")
    tokens = stem.split("_")
    if _starts_like_outdoor(tokens):
        height, distance, angle = _read_outdoor(name, tokens)
        return FrameNameInfo("outdoor", "aerial", tokens[0], _read_session(tokens), height, distance, angle, len(tokens))
    if is_ascii_int(tokens[0]) and len(tokens) >= 2:
        return FrameNameInfo("ground", "ground", tokens[0], None, None, None, None, len(tokens))
    if unknown_as_ground:
        return FrameNameInfo("unknown", "ground", None, None, None, None, None, len(tokens))
    raise ValueError(
        f"Frame name {name!r} fits no DetReIDX scheme (outdoor: PID_DD_MM_YYYY_HH_MM_Height_Distance_Angle_..._Session_Frame; "
        f"ground: PID_..._Frame, first token an integer PID). Rename the file, remove it, or set "
        f"DATASETS.UNKNOWN_NAMES_AS_GROUND True to treat such frames as ground frames."
    )


# ----------------------------------------------------------------------------- compact frame lists
_LAST_NUMBER_RE = re.compile(r"(.*[^0-9])?([0-9]+)([^0-9]*)", re.S)
_MAX_NUMBER_DIGITS = 18            # fits int64


_NAME_SEPARATOR = "\0"


class FrameNames(Sequence):
    """The frame file names of one tracklet, in order, stored compactly.

    DetReIDX tracklets hold ~1,000 frames whose names differ only in a frame number, so a tracklet
    keeps one template ``prefix + number + suffix`` (``width`` > 0: zero-padded to that width) and
    its numbers (a ``range`` when evenly spaced, else an int array). Names that fit no template are
    kept as one NUL-joined string (NUL occurs in no path, so full paths fit too). Names are built when read.
    """

    __slots__ = ("prefix", "suffix", "width", "numbers", "_joined", "_starts")

    def __init__(self, prefix: str = "", suffix: str = "", width: int = 0, numbers: range | np.ndarray = range(0),
                 joined: str | None = None):
        self.prefix, self.suffix, self.width, self.numbers = prefix, suffix, width, numbers
        self._joined = joined
        self._starts = None
        if joined is not None:
            lengths = np.fromiter((len(n) + 1 for n in joined.split(_NAME_SEPARATOR)), dtype=np.int64)
            self._starts = np.concatenate([[0], np.cumsum(lengths)])

    @classmethod
    def from_names(cls, names: Sequence[str], sort: bool = True) -> "FrameNames":
        """Compact ``names``; ``sort``: in natural order (frame_2 before frame_10), else as given."""
        names = list(names)
        template = cls._template(names, sort)
        if template is not None:
            return template
        if sort:
            names.sort(key=natural_sort_key)
        return cls(joined=_NAME_SEPARATOR.join(names))

    @classmethod
    def _template(cls, names: list[str], sort: bool) -> "FrameNames | None":
        if not names:
            return cls()
        match = _LAST_NUMBER_RE.fullmatch(names[0])
        if match is None:
            return None
        prefix, suffix = match.group(1) or "", match.group(3)
        start, cut = len(prefix), len(suffix)
        if not all(n.startswith(prefix) and n.endswith(suffix) and len(n) > start + cut for n in names):
            return None
        digits = [n[start:len(n) - cut] for n in names]
        joined = "".join(digits)
        if not (joined.isascii() and joined.isdigit()):
            return None
        lengths = {len(d) for d in digits}
        if max(lengths) > _MAX_NUMBER_DIGITS:
            return None
        if len(lengths) == 1:
            width = lengths.pop()
        elif any(len(d) > 1 and d[0] == "0" for d in digits):
            return None          # mixed widths with leading zeros: no single template rebuilds them
        else:
            width = 0
        numbers = np.array(digits).astype(np.int64)
        if sort:
            numbers = np.sort(numbers)
        if len(numbers) == 1:
            return cls(prefix, suffix, width, range(int(numbers[0]), int(numbers[0]) + 1))
        steps = np.diff(numbers)
        if steps[0] > 0 and bool((steps == steps[0]).all()):
            return cls(prefix, suffix, width, range(int(numbers[0]), int(numbers[-1]) + 1, int(steps[0])))
        if numbers.min() >= 0 and numbers.max() < 2**31:
            numbers = numbers.astype(np.int32)
        return cls(prefix, suffix, width, numbers)

    def _name(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.width}d}{self.suffix}" if self.width else f"{self.prefix}{number}{self.suffix}"

    def __len__(self) -> int:
        if self._joined is not None:
            return len(self._starts) - 1
        return len(self.numbers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame index {index} out of range for a tracklet of {len(self)} frames")
        if self._joined is not None:
            return self._joined[int(self._starts[index]):int(self._starts[index + 1]) - 1]
        return self._name(int(self.numbers[index]))

    def __iter__(self) -> Iterator[str]:
        if self._joined is not None:
            if self._joined or len(self):
                yield from self._joined.split(_NAME_SEPARATOR)
            return
        for number in self.numbers:
            yield self._name(int(number))

    def _state(self) -> tuple:
        if self._joined is not None:
            return ("joined", self._joined)
        numbers = self.numbers
        key = (numbers.start, numbers.stop, numbers.step) if isinstance(numbers, range) else np.asarray(numbers, np.int64).tobytes()
        return (self.prefix, self.suffix, self.width, key)

    def __eq__(self, other) -> bool:
        if isinstance(other, FrameNames):
            # The same names always get the same representation, so comparing states is enough.
            return self._state() == other._state()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._state())

    def __repr__(self) -> str:
        return f"FrameNames({len(self)} names, first {self[0]!r})" if len(self) else "FrameNames(empty)"


class FramePaths(Sequence):
    """Frame file paths of one tracklet: its folder plus its :class:`FrameNames`; paths are built when read."""

    __slots__ = ("folder", "names")

    def __init__(self, folder: str, names: FrameNames):
        self.folder, self.names = folder, names

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> "FramePaths":
        """From full paths in the given order. Frames of one folder (the usual case) keep the folder once;
        frames from several folders (a hand-made frame list) keep their whole paths."""
        paths = [os.path.normpath(p) for p in paths]
        folders = {os.path.dirname(p) for p in paths}
        if len(folders) > 1:
            return cls("", FrameNames.from_names(paths, sort=False))
        return cls(folders.pop() if folders else "", FrameNames.from_names([os.path.basename(p) for p in paths], sort=False))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [os.path.join(self.folder, n) for n in self.names[index]]
        return os.path.join(self.folder, self.names[index])

    def __iter__(self) -> Iterator[str]:
        folder = self.folder
        return (os.path.join(folder, n) for n in self.names)

    def __eq__(self, other) -> bool:
        if isinstance(other, FramePaths):
            return self.folder == other.folder and self.names == other.names
        if isinstance(other, (tuple, list)):
            return list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.folder, self.names))

    def __repr__(self) -> str:
        return f"FramePaths({self.folder!r}, {self.names!r})"


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Tracklet:
    """One tracklet (a folder of frames of one person seen by one camera).

    ``frames`` is a sequence of frame paths (``frames[i]``, ``len(frames)``, iteration) stored as the
    folder plus compact names (:class:`FramePaths`); a tuple of paths given here is compacted.
    """

    frames: FramePaths               # frame file paths in temporal order (natural sort of the names)
    pid: int                         # PID folder as an int (anonymised id in the public test set)
    camid: int                       # 0 ground, 1.. aerial sessions in sorted order (S1 -> 1, S2 -> 2)
    view: str                        # "aerial" | "ground"
    name: str                        # tracklet folder name, e.g. "0004_12"
    session: str | None              # "S1"/"S2"/None
    height: float | None             # drone altitude m (None for ground)
    distance: float | None           # horizontal distance m
    angle: float | None              # pitch degrees
    aerial_distance: float | None    # sqrt(h^2 + d^2)
    label: int = -1                  # relabelled train pid 0..C-1 (train only), -1 elsewhere

    def __post_init__(self):
        if not isinstance(self.frames, FramePaths):
            object.__setattr__(self, "frames", FramePaths.from_paths(self.frames))

    @property
    def folder(self) -> str:
        return self.frames.folder

    @property
    def frame_names(self) -> FrameNames:
        return self.frames.names

    def frame_path(self, index: int) -> str:
        return self.frames[index]

    @property
    def view_id(self) -> int:
        return 1 if self.view == "aerial" else 0

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def capture_point(self) -> tuple[float, float, float] | None:
        if self.height is None:
            return None
        return (self.height, self.distance, self.angle)


@dataclass
class CaseSplit:
    """Query and gallery of one evaluation case (1: A->G, 2: G->A, 3: A->A)."""

    case: int
    query: list[Tracklet]            # sorted by (pid, name): the submission CSV order
    gallery: list[Tracklet]          # sorted by (pid, name)
    has_ground_truth: bool = True    # False when query pids never occur in the gallery (anonymised test set)

    @property
    def name(self) -> str:
        return CASE_NAMES[self.case]


def _sort_tracklets(tracklets: Iterable[Tracklet]) -> list[Tracklet]:
    """In submission row order (PID as an integer, then the name as a plain string)."""
    return sorted(tracklets, key=lambda t: submission_row_key(t.pid, t.name))


def _make_case(case: int, query: list[Tracklet], gallery: list[Tracklet]) -> CaseSplit:
    query, gallery = _sort_tracklets(query), _sort_tracklets(gallery)
    gallery_pids = {t.pid for t in gallery}
    has_gt = any(t.pid in gallery_pids for t in query)
    return CaseSplit(case=case, query=query, gallery=gallery, has_ground_truth=has_gt)


# ----------------------------------------------------------------------------- scanning
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


def standard_camera_index(camera_keys: Iterable[str] = (), num_cameras: int = 0) -> dict[str, int]:
    """Camera key -> SIE camera id: ground 0, aerial session n -> n (stable whichever sessions are
    present), aerial tracklets without a readable session the next id. ``num_cameras`` adds the
    sessions 1..num_cameras-1 (the table of a checkpoint that stored only its camera count)."""
    sessions = {int(k[len("aerial-S"):]) for k in camera_keys if k.startswith("aerial-S")}
    sessions |= set(range(1, num_cameras))
    index = {"ground": 0, **{f"aerial-S{n}": n for n in sorted(sessions)}}
    if "aerial-unknown" in camera_keys:
        index["aerial-unknown"] = max(index.values()) + 1
    return index


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
        if self.view == "ground":
            return "ground"
        return f"aerial-{self.session or 'unknown'}"


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
        listed = "; ".join(f"{path!r} {reason}" for path, reason in unreadable[:10])
        raise DatasetLayoutError(
            f"{len(unreadable)} PID or tracklet folder(s) cannot be read, so their tracklets would be missing from "
            f"training and from the submission. First {min(10, len(unreadable))}: {listed}. Fix the links or the "
            f"permissions (chmod -R u+rX), or move these folders out of the dataset root."
        )
    if unusable:
        listed = "; ".join(f"{path!r} {reason}" for path, reason in unusable[:10])
        raise DatasetLayoutError(
            f"{len(unusable)} tracklet folder name(s) cannot go into the submission CSV (rows are named after "
            f"tracklet folders; no whitespace, comma or quote; {{pid}}_{{tid}} with integer ids under TEST.JUNK_RULE "
            f"tracklet). First {min(10, len(unusable))}: {listed}. Rename them before training."
        )
    return found


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


# ----------------------------------------------------------------------------- scan cache
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


# ----------------------------------------------------------------------------- validation split
def split_cases_from_tracklets(tracklets: Sequence[Tracklet], rng: np.random.Generator) -> dict[int, CaseSplit]:
    """Lay out labelled tracklets like the three test cases, each query with a true match.

    Case 1: aerial queries vs ground gallery; case 2: ground queries vs aerial gallery; case 3:
    each identity's aerial tracklets are split per camera (session) into a query half and a
    gallery half, the gallery keeping at least one tracklet of every camera, so that every query
    has a same-identity gallery tracklet with another name (challenge rule) and, when the identity
    was filmed in two sessions, with another camera (Market-1501 rule). Queries without a match are
    dropped; cases left empty are omitted.
    """
    by_pid: dict[int, list[Tracklet]] = defaultdict(list)
    for t in tracklets:
        by_pid[t.pid].append(t)
    queries: dict[int, list[Tracklet]] = {1: [], 2: [], 3: []}
    galleries: dict[int, list[Tracklet]] = {1: [], 2: [], 3: []}
    for pid in sorted(by_pid):
        own = _sort_tracklets(by_pid[pid])
        aerial = [t for t in own if t.view == "aerial"]
        ground = [t for t in own if t.view == "ground"]
        if aerial and ground:
            queries[1] += aerial
            galleries[1] += ground
            queries[2] += ground
            galleries[2] += aerial
        else:
            # Gallery distractors: an identity seen from one view only still belongs in that gallery.
            galleries[1] += ground
            galleries[2] += aerial
        a2a_query, a2a_gallery = split_aerial_to_aerial(aerial, rng)
        queries[3] += a2a_query
        galleries[3] += a2a_gallery
    cases = {}
    for case in (1, 2, 3):
        if queries[case] and galleries[case]:
            cases[case] = _make_case(case, queries[case], galleries[case])
    return cases


def split_aerial_to_aerial(aerial: Sequence, rng: np.random.Generator) -> tuple[list, list]:
    """Split one identity's aerial tracklets into (query, gallery) as described in split_cases_from_tracklets.

    Works on any records with a ``camid`` attribute (the synthetic generator uses it too).
    """
    if len(aerial) < 2:
        return [], list(aerial)
    by_cam: dict[int, list[Tracklet]] = defaultdict(list)
    for t in aerial:
        by_cam[t.camid].append(t)
    query: list = []
    gallery: list = []
    for camid in sorted(by_cam):
        group = [by_cam[camid][i] for i in rng.permutation(len(by_cam[camid]))]
        n_query = len(group) // 2     # at least one per camera stays in the gallery
        query += group[:n_query]
        gallery += group[n_query:]
    if not query and len(by_cam) > 1:
        # Every camera holds one tracklet: the first camera's one becomes the query.
        first = by_cam[min(by_cam)][0]
        query, gallery = [first], [t for t in gallery if t is not first]
    return query, gallery


# ----------------------------------------------------------------------------- dataset
@register_dataset("detreidx")
class DetReIDX:
    """Scan a DetReIDX root: train (relabelled, minus validation identities), validation cases, test cases.

    Args:
        root: dataset root holding ``train/`` and/or the three ``case*/`` folders.
        val_ids: number of train identities held out as a labelled validation split (``DATASETS.VAL_IDS``).
        unknown_names_as_ground: treat frame names that fit no scheme as ground frames
            (``DATASETS.UNKNOWN_NAMES_AS_GROUND``; in a case folder they take the folder's view) instead of failing.
        seed: chooses the validation identities and their case-3 query/gallery split.
        junk_rule: ``TEST.JUNK_RULE``; under "tracklet" every tracklet folder must be named ``{pid}_{tid}``.
        scan_cache_dir: folder of the scan cache (``DATASETS.SCAN_CACHE_DIR``; "auto": the user cache
            folder, "" or None: no cache). Keyed on the root, the name-reading option and every tracklet
            folder's mtime and inode change time; its records must be exactly the folders walked at start.
        camera_index: camera key ("ground", "aerial-S1", ...) -> SIE camera id of a trained model (its
            checkpoint's table); default :func:`standard_camera_index` of the cameras found.
    """

    def __init__(self, root: str, val_ids: int = 0, unknown_names_as_ground: bool = False, seed: int = 0,
                 junk_rule: str = "tracklet", scan_cache_dir: str | None = None,
                 cases: Sequence[int] | None = None, camera_index: dict[str, int] | None = None):
        self.root = os.path.abspath(root)
        self.wanted_cases = set(CASE_FOLDERS) if cases is None else set(cases)  # the case folders to scan
        self.unknown_names_as_ground = unknown_names_as_ground
        if junk_rule not in JUNK_RULES:
            raise ValueError(f"TEST.JUNK_RULE must be one of {JUNK_RULES}, got {junk_rule!r}")
        self.junk_rule = junk_rule
        self.scan_cache_dir = default_scan_cache_dir() if scan_cache_dir == "auto" else (scan_cache_dir or None)
        if not os.path.isdir(self.root):
            raise DatasetLayoutError(
                f"Dataset root {self.root} does not exist. Set DATASETS.ROOT_DIR to the DetReIDXV1 folder "
                f"(holding train/ and case*/), or generate the synthetic dataset there with "
                f"`python -m datasets.synthetic --root {root}` (or DATASETS.SYNTHETIC_IF_MISSING True)."
            )
        start = time.perf_counter()
        parts, raw = self._scan()
        self.scan_summary = _summarise(parts, raw)
        self.scan_summary.seconds = time.perf_counter() - start
        self.scan_summary.from_cache = self._from_cache
        for count, line in self.scan_summary.anomalies():
            if count:
                logger.warning("Scan of %s: %s", self.root, line)
        raw_train = [t for t in raw if parts[t.part].case is None]
        raw_cases: dict[int, tuple[list[_RawTracklet], list[_RawTracklet]]] = {}
        for t in raw:
            part = parts[t.part]
            if part.case is not None:
                raw_cases.setdefault(part.case, ([], []))[CASE_PARTS.index(part.role)].append(t)

        camera_keys = {t.camera_key for t in raw}
        self.camera_index: dict[str, int] = dict(camera_index) if camera_index else standard_camera_index(camera_keys)
        self.num_cameras = max(self.camera_index.values()) + 1
        # Cameras the given table (a checkpoint's) does not know: an aerial one takes the table's first
        # aerial camera, so the SIE lookup stays in range; reported, never silent.
        aerial_ids = sorted(i for k, i in self.camera_index.items() if k != "ground")
        self.camera_fallback = {k: (aerial_ids[0] if aerial_ids and k != "ground" else 0)
                                for k in sorted(camera_keys - set(self.camera_index))}
        if self.camera_fallback:
            counts = Counter(t.camera_key for t in raw if t.camera_key in self.camera_fallback)
            logger.warning("Cameras unknown to the model's camera table %s: %s", self.camera_index, ", ".join(
                f"{k} ({counts[k]} tracklets) -> camera {i}" for k, i in self.camera_fallback.items()))

        all_train = [self._to_tracklet(t) for t in raw_train]
        train_pids = sorted({t.pid for t in all_train})
        if val_ids < 0 or (val_ids and val_ids >= len(train_pids)):
            raise DatasetLayoutError(
                f"DATASETS.VAL_IDS = {val_ids} but {os.path.join(self.root, TRAIN_FOLDER)} holds "
                f"{len(train_pids)} identities; choose 0 <= VAL_IDS < {len(train_pids)}."
            )
        rng = np.random.default_rng(seed)
        self.val_pids = self._choose_val_pids(all_train, val_ids, rng)
        kept_pids = [p for p in train_pids if p not in self.val_pids]
        relabel = {pid: label for label, pid in enumerate(kept_pids)}
        self.pid_to_label = relabel
        self.train: list[Tracklet] = [
            replace(t, label=relabel[t.pid]) for t in _sort_tracklets(all_train) if t.pid in relabel
        ]
        self.num_train_pids = len(kept_pids)
        val_tracklets = [t for t in all_train if t.pid in self.val_pids]
        self.val: dict[int, CaseSplit] = split_cases_from_tracklets(val_tracklets, rng) if val_tracklets else {}
        if val_ids and len(self.val) < 3:
            missing = sorted(set(CASE_FOLDERS) - set(self.val))
            logger.warning("Validation split has no queries with a true match for case(s) %s", missing)
        self.cases: dict[int, CaseSplit] = {
            case: _make_case(case, [self._to_tracklet(t) for t in q], [self._to_tracklet(t) for t in g])
            for case, (q, g) in sorted(raw_cases.items())
        }
        logger.info("DetReIDX at %s\n%s", self.root, self.statistics_table())

    # -- scanning
    def _parts(self) -> list[_Part]:
        train_dir = os.path.join(self.root, TRAIN_FOLDER)
        case_dirs = {c: os.path.join(self.root, f) for c, f in CASE_FOLDERS.items()}
        present = {c for c, d in case_dirs.items() if os.path.isdir(d) and c in self.wanted_cases}
        if not os.path.isdir(train_dir) and not present:
            raise DatasetLayoutError(
                f"Dataset root {self.root} holds neither {TRAIN_FOLDER}/ nor any of "
                f"{', '.join(CASE_FOLDERS.values())}. Point DATASETS.ROOT_DIR at the DetReIDXV1 folder. "
                f"{EXPECTED_LAYOUT}"
            )
        if present and present != self.wanted_cases:
            missing = [case_dirs[c] for c in sorted(self.wanted_cases - present)]
            raise DatasetLayoutError(
                f"Missing case folder(s): {', '.join(missing)} (the root has the other case folders). "
                f"Copy the complete test set into {self.root}. {EXPECTED_LAYOUT}"
            )
        parts = []
        if os.path.isdir(train_dir):
            parts.append(_Part(TRAIN_FOLDER, train_dir, None))
        else:
            logger.warning("No %s/ folder in %s: only the test cases are available", TRAIN_FOLDER, self.root)
        for case in sorted(present):
            for role, view in zip(CASE_PARTS, CASE_VIEWS[case]):
                part_dir = os.path.join(case_dirs[case], role)
                _check_folder(part_dir, f"{role} folder of {CASE_FOLDERS[case]}",
                              f"Each case folder holds query/ and gallery/; copy the complete test set into "
                              f"{self.root}. {EXPECTED_LAYOUT}")
                parts.append(_Part(f"{CASE_FOLDERS[case]}/{role}", part_dir, view, case, role))
        return parts

    def _scan(self) -> tuple[list[_Part], list[_RawTracklet]]:
        parts = self._parts()
        dirs = _walk_folders(parts, self.junk_rule)
        self._from_cache = False
        key = cache_file = None
        raw = None
        if self.scan_cache_dir:
            key = _cache_key(self.root, dirs, self.unknown_names_as_ground)
            cache_file = _cache_path(self.scan_cache_dir, self.root)
            _SCAN_CACHE_FILES[self.root] = cache_file
            raw = _load_scan_cache(cache_file, key, self.root, dirs, self.unknown_names_as_ground)
            self._from_cache = raw is not None
        if raw is None:
            raw = []
            for d in dirs:
                frames, info = _scan_tracklet(d.path, self.unknown_names_as_ground)
                fixed = parts[d.part].fixed_view
                raw.append(_RawTracklet(frames, d.pid, d.name, d.part, info, fixed or info.view))
            newest = max((d.mtime_ns for d in dirs), default=0) / 1e9
            if cache_file is not None and time.time() - newest > SCAN_CACHE_SETTLE_S:
                try:
                    _save_scan_cache(cache_file, key, self.root, raw)
                except OSError as exc:
                    logger.warning("Could not write the scan cache %s (%s); the next start scans again", cache_file, exc)
        if parts[0].case is None:
            _check_unique_names((t for t in raw if t.part == 0), parts[0].path)
        for case in sorted({p.case for p in parts if p.case is not None}):
            _check_unique_names((t for t in raw if parts[t.part].case == case), os.path.join(self.root, CASE_FOLDERS[case]))
        return parts, raw

    def _to_tracklet(self, raw: _RawTracklet) -> Tracklet:
        info = raw.info
        aerial = raw.view == "aerial"
        return Tracklet(
            frames=raw.frames, pid=raw.pid, camid=self.camera_index.get(raw.camera_key, self.camera_fallback.get(raw.camera_key)), view=raw.view,
            name=raw.name, session=raw.session, height=info.height if aerial else None,
            distance=info.distance if aerial else None, angle=info.angle if aerial else None,
            aerial_distance=info.aerial_distance if aerial else None,
        )

    @staticmethod
    def _choose_val_pids(tracklets: Sequence[Tracklet], val_ids: int, rng: np.random.Generator) -> set[int]:
        if val_ids == 0:
            return set()
        views = defaultdict(set)
        for t in tracklets:
            views[t.pid].add(t.view)
        # Identities seen from both views first: they give queries to all three cases.
        both = sorted(p for p, v in views.items() if len(v) == 2)
        single = sorted(p for p, v in views.items() if len(v) < 2)
        chosen = [both[i] for i in rng.permutation(len(both))][:val_ids]
        if len(chosen) < val_ids:
            chosen += [single[i] for i in rng.permutation(len(single))][: val_ids - len(chosen)]
        return set(chosen)

    # -- reporting
    def statistics_table(self) -> str:
        """A text table: identities, tracklets, frames per split/case, cameras, capture points and what
        the scanner understood of the names."""
        rows: list[tuple[str, Sequence[Tracklet]]] = [("train", self.train)]
        for case, split in sorted(self.val.items()):
            rows += [(f"val {CASE_FOLDERS[case]} query", split.query), (f"val {CASE_FOLDERS[case]} gallery", split.gallery)]
        for case, split in sorted(self.cases.items()):
            rows += [(f"{CASE_FOLDERS[case]} query", split.query), (f"{CASE_FOLDERS[case]} gallery", split.gallery)]
        header = ("split", "ids", "tracklets", "frames", "len min/mean/max", "len<8", "aerial", "ground")
        table = [header]
        for label, tracklets in rows:
            lengths = np.array([t.num_frames for t in tracklets]) if tracklets else np.zeros(1, dtype=int)
            table.append((
                label, str(len({t.pid for t in tracklets})), str(len(tracklets)), str(int(lengths.sum())),
                f"{lengths.min()}/{lengths.mean():.1f}/{lengths.max()}", str(int((lengths < 8).sum()) if tracklets else 0),
                str(sum(t.view == "aerial" for t in tracklets)), str(sum(t.view == "ground" for t in tracklets)),
            ))
        lines = [_format_table(table)]

        names = {v: k for k, v in self.camera_index.items()}
        cam_counts = Counter(t.camid for t in self._unique_tracklets())
        cams = ", ".join(f"{cid}={names[cid]} ({cam_counts.get(cid, 0)} tracklets)" for cid in sorted(names))
        lines.append(f"cameras: {self.num_cameras} [{cams}]; train identities after relabelling: {self.num_train_pids}"
                     + (f"; validation identities: {len(self.val_pids)}" if self.val_pids else ""))

        groups = {"train": self.train,
                  "val": [t for s in self.val.values() for t in s.query + s.gallery],
                  "test": [t for s in self.cases.values() for t in s.query + s.gallery]}
        per_point: dict[str, Counter] = {}
        for group, tracklets in groups.items():
            seen = {}
            for t in tracklets:
                seen[t.name] = t          # the same tracklet is listed in several cases: count it once
            per_point[group] = Counter(_capture_label(t) for t in seen.values())
        labels = sorted(set().union(*per_point.values()), key=_capture_sort_key)
        point_table = [("capture point (h/d/angle)", *groups.keys())]
        point_table += [(label, *(str(per_point[g].get(label, 0)) for g in groups)) for label in labels]
        lines.append("tracklets per capture point (unique tracklet names):")
        lines.append(_format_table(point_table))
        lines += self.scan_summary.lines()
        return "\n".join(lines)

    def _unique_tracklets(self) -> list[Tracklet]:
        seen = {}
        for t in self.train + [t for s in list(self.val.values()) + list(self.cases.values()) for t in s.query + s.gallery]:
            seen[(t.pid, t.name)] = t
        return list(seen.values())


def _capture_label(t: Tracklet) -> str:
    if t.view == "ground":
        return "ground"
    if t.height is None:
        return "aerial (unknown)"
    return f"{t.height:g}m/{t.distance:g}m/{t.angle:g}deg"


def _capture_sort_key(label: str) -> tuple:
    if label == "ground":
        return (0, 0.0, 0.0, 0.0)
    if "unknown" in label:
        return (2, 0.0, 0.0, 0.0)
    h, d, a = (float(x.rstrip("mdeg")) for x in label.split("/"))
    return (1, a, h, d)


def _format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scan a DetReIDX root and print its statistics table.")
    parser.add_argument("--root", required=True, help="dataset root (train/ and case*/ folders)")
    parser.add_argument("--val-ids", type=int, default=0, help="train identities held out as validation (DATASETS.VAL_IDS)")
    parser.add_argument("--unknown-names-as-ground", action="store_true", help="treat unparseable frame names as ground frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    parser.add_argument("--junk-rule", choices=JUNK_RULES, default="tracklet",
                        help="TEST.JUNK_RULE: 'tracklet' needs {pid}_{tid} tracklet folder names")
    parser.add_argument("--scan-cache", default="", help="scan cache folder (DATASETS.SCAN_CACHE_DIR; 'auto' = user cache; default: none)")
    args = parser.parse_args(argv)
    try:
        dataset = DetReIDX(args.root, val_ids=args.val_ids, unknown_names_as_ground=args.unknown_names_as_ground,
                           seed=args.seed, junk_rule=args.junk_rule, scan_cache_dir=args.scan_cache)
    except DatasetLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"DetReIDX at {dataset.root}")
    print(dataset.statistics_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
