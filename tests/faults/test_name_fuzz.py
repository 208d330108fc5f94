"""Fuzzed frame names (issue 13.7): about 1,000 seeded names of the families the fault campaign used.

Property: a name is either parsed with every field in range, or refused with a ``ValueError`` that
names the file. Outdoor-style names with one broken field, impossible dates and Unicode digits are
always refused (never read as ground frames). Run with ``-s`` to see the counts per family.
"""
import math
import re
from collections import Counter

import numpy as np
import pytest

from datasets.detreidx.names import CAPTURE_POINTS, FrameNameInfo, parse_frame_name
from utils.protocol import is_ascii_int

NAMES_PER_FAMILY = 125
SOFT = "3_2_1_0_0_0_0_5_2_1_0_1_2"     # location .. drone scene (fields 9-21)
BROKEN_NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "-5", "-0.5", "1e3", "", "x", "5,8", "5.", ".5",
                  "\u0661\u0662", "1\u00b2", "\uff15", "+5"]
IMPOSSIBLE_DATES = [("31", "02", "2024"), ("30", "02", "2024"), ("29", "02", "2023"), ("31", "04", "2024"),
                    ("00", "10", "2024"), ("32", "10", "2024"), ("23", "00", "2024"), ("23", "13", "2024"),
                    ("23", "10", "0000")]
UNICODE_DIGITS = ["\u00b2", "\u0663", "\u096a", "\uff17", "\u2460", "\u00bd"]


def _outdoor(rng, pid=None, date=None, time=None, point=None, session=None, frame=True) -> list[str]:
    day, month, year = date or (f"{rng.integers(1, 29):02d}", f"{rng.integers(1, 13):02d}", str(rng.integers(2020, 2026)))
    hour, minute = time or (f"{rng.integers(0, 24):02d}", f"{rng.integers(0, 60):02d}")
    height, distance, angle = point or tuple(f"{v:g}" for v in CAPTURE_POINTS[rng.integers(len(CAPTURE_POINTS))])
    session = session or str(rng.choice(["1", "2", "S1", "S2", "s1"]))
    tokens = [pid or f"{rng.integers(0, 10000):04d}", day, month, year, hour, minute, height, distance, angle, SOFT, session]
    if frame:
        tokens.append(f"{rng.integers(0, 100000):05d}")
    return tokens


def _family_valid_outdoor(rng):
    return "_".join(_outdoor(rng)) + ".jpg"


def _family_valid_ground(rng):
    pid = f"{rng.integers(0, 10000):04d}"
    short = [pid, str(rng.choice(["M", "F"])), str(rng.integers(18, 80)), str(rng.choice(list("FLBR"))), f"{rng.integers(0, 10**5):05d}"]
    long = [pid, short[1], short[2], str(rng.integers(150, 200)), str(rng.integers(45, 110)), str(rng.integers(1, 6)),
            str(rng.choice([0, 45, 90])), short[3], short[4]]
    return "_".join(short[: rng.integers(2, 6)] if rng.random() < 0.5 else long) + ".jpg"


def _family_broken_field(rng):
    point = [f"{v:g}" for v in CAPTURE_POINTS[rng.integers(len(CAPTURE_POINTS))]]
    field = int(rng.integers(3))
    options = BROKEN_NUMBERS + (["95", "90.5", "180"] if field == 2 else [])
    point[field] = str(rng.choice(options))
    return "_".join(_outdoor(rng, point=tuple(point))) + ".jpg"


def _family_impossible_date(rng):
    if rng.random() < 0.7:
        date = IMPOSSIBLE_DATES[rng.integers(len(IMPOSSIBLE_DATES))]
        return "_".join(_outdoor(rng, date=date)) + ".jpg"
    time = (str(rng.choice(["24", "25", "99"])), "00") if rng.random() < 0.5 else ("10", str(rng.choice(["60", "61", "99"])))
    return "_".join(_outdoor(rng, time=time)) + ".jpg"


def _family_unicode_digit(rng):
    name = _family_valid_outdoor(rng) if rng.random() < 0.5 else _family_valid_ground(rng)
    positions = [i for i, c in enumerate(name) if c.isdigit()]
    at = positions[rng.integers(len(positions))]
    return name[:at] + str(rng.choice(UNICODE_DIGITS)) + name[at + 1:]


def _family_truncated_outdoor(rng):
    tokens = "_".join(_outdoor(rng)).split("_")
    return "_".join(tokens[: rng.integers(8, 11)]) + ".jpg"


def _family_session_variants(rng):
    session = str(rng.choice(["0", "S0", "X", "S", "s", "12", "S12", "-1", "\u00b9"]))
    return "_".join(_outdoor(rng, session=session, frame=bool(rng.random() < 0.8))) + ".jpg"


def _family_junk(rng):
    alphabet = list("abcXYZ0123456789_-.+ ") + ["nan", "inf", "\u00b2"]
    return "".join(str(rng.choice(alphabet)) for _ in range(rng.integers(1, 40))) + ".jpg"


FAMILIES = {
    "valid outdoor": (_family_valid_outdoor, "parsed"),
    "valid ground": (_family_valid_ground, "parsed"),
    "broken height/distance/angle": (_family_broken_field, "refused"),
    "impossible date or time": (_family_impossible_date, "refused"),
    "unicode digit": (_family_unicode_digit, "refused"),
    "truncated outdoor": (_family_truncated_outdoor, "either"),
    "session variants": (_family_session_variants, "either"),
    "junk": (_family_junk, "either"),
}


def _check_in_range(info: FrameNameInfo, path: str) -> None:
    assert info.scheme in ("outdoor", "ground"), path
    assert is_ascii_int(info.pid_token), path
    if info.scheme == "outdoor":
        assert info.view == "aerial"
        for value in (info.height, info.distance, info.angle):
            assert value is not None and math.isfinite(value) and value >= 0, path
        assert info.angle <= 90, path
        assert info.session is None or re.fullmatch(r"S[1-9][0-9]*", info.session), path
    else:
        assert info.view == "ground" and info.height is None and info.session is None, path


def test_fuzzed_names_are_parsed_in_range_or_refused_naming_the_file():
    rng = np.random.default_rng(2026)
    counts: Counter = Counter()
    for family, (make, expected) in FAMILIES.items():
        for index in range(NAMES_PER_FAMILY):
            path = f"/data/train/{index:04d}/{index:04d}_{index}/{make(rng)}"
            try:
                info = parse_frame_name(path)
            except ValueError as exc:
                assert repr(path) in str(exc), f"error does not name the file: {exc}"
                assert expected != "parsed", f"{family}: {path!r} refused: {exc}"
                counts[(family, "refused")] += 1
                continue
            assert expected != "refused", f"{family}: {path!r} accepted as {info}"
            _check_in_range(info, path)
            counts[(family, f"parsed {info.scheme}")] += 1
    total = sum(counts.values())
    print(f"\n{total} fuzzed names:")
    for (family, outcome), count in sorted(counts.items()):
        print(f"  {family:30s} {outcome:15s} {count}")
    assert total == NAMES_PER_FAMILY * len(FAMILIES) == 1000
    assert counts[("valid outdoor", "parsed outdoor")] == NAMES_PER_FAMILY
    assert counts[("broken height/distance/angle", "refused")] == NAMES_PER_FAMILY
    assert counts[("impossible date or time", "refused")] == NAMES_PER_FAMILY
    assert counts[("unicode digit", "refused")] == NAMES_PER_FAMILY


@pytest.mark.parametrize("token", BROKEN_NUMBERS)
def test_every_broken_number_is_refused_as_height(token):
    path = "_".join(["0004", "23", "10", "2024", "09", "18", token, "10", "30", SOFT, "1", "00001"]) + ".jpg"
    with pytest.raises(ValueError, match="height|non-ASCII digit") as err:
        parse_frame_name(path)
    assert repr(path) in str(err.value)
