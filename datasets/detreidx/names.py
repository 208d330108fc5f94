"""DetReIDX frame names and cameras: what a frame file name says about its tracklet, and the camera ids.

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
Only ASCII digits count as digits anywhere a number is read.

Cameras: ground is camera 0 and aerial session ``n`` camera ``n``; an aerial tracklet without a
readable session gets its own camera after them (:func:`standard_camera_index`).
"""
from __future__ import annotations

import calendar
import math
import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from utils.protocol import is_ascii_int

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


def non_ascii_digit(text: str) -> str | None:
    """The first character of ``text`` that Python reads as a digit but is not ASCII (``'²'``), or None."""
    if text.isascii():
        return None
    return next((c for c in text if c.isnumeric() and not c.isascii()), None)


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


# ----------------------------------------------------------------------------- cameras
def camera_key(view: str, session: str | None) -> str:
    """The key of a tracklet's camera in a camera table: "ground", "aerial-S<n>" or "aerial-unknown"."""
    if view == "ground":
        return "ground"
    return f"aerial-{session or 'unknown'}"


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

