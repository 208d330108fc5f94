"""DetReIDX frame names (datasets/detreidx/names.py) as the authors write them: the two naming schemes, the
session token, fields that cannot be read or lie outside their physical range, impossible dates, Unicode digits,
camera keys and the standard camera numbering; plus property-based tests (hypothesis) beside the seeded fuzz loop
of tests/faults/test_name_fuzz.py: hypothesis searches the input space and shrinks a failure to a minimal name."""
import math
import re
from datetime import date

import numpy as np
import pytest
from hypothesis import given, strategies as st

from datasets.detreidx.names import (
    CAPTURE_POINTS,
    MAX_DISTANCE_M,
    MAX_HEIGHT_M,
    camera_key,
    parse_frame_name,
    standard_camera_index,
)
from utils.protocol import is_ascii_int

HEAD = "0004_23_10_2024_09_18"
TAIL = "3_2_1_0_0_0_0_5_2_1_0_1_2"          # location .. drone scene (fields 9-21)
REAL_OUTDOOR = "0004_23_10_2024_09_18_5.8_10_30_3_2_1_0_0_0_0_5_2_1_0_1_2_S1_000123.jpg"
DOCS_MAX_HEIGHT_M, DOCS_MAX_DISTANCE_M = 500.0, 1000.0  # the physical ranges of docs/data.md (Frame names)
HEAD_WITH_CAPTURE = "0004_23_10_2024_09_18_5.8_10_30"
SOFT_12 = "3_2_1_0_0_0_0_5_2_1_0_1"          # fields 9-20; field 21 follows in each case below
SOFT = st.lists(st.integers(0, 29).map(str), min_size=13, max_size=13)       # location .. drone scene
NAME_ALPHABET = st.sampled_from(list("0123456789_._SsxM-+ e") + ["nan", "inf", "\u00b2", "\u0663", "\uff15", "12", "2024"])


# ----------------------------------------------------------------------------- the session token
@pytest.mark.parametrize("token, session", [("1", "S1"), ("2", "S2"), ("S2", "S2"), ("s1", "S1"), ("3", "S3")])
def test_session_is_the_token_before_the_frame_number(token, session):
    # The authors' loader: session = int(tokens[-2]).
    info = parse_frame_name(f"{HEAD}_5.8_10_30_{TAIL}_{token}_000123.jpg")
    assert info.scheme == "outdoor" and info.session == session and info.num_tokens == 24


def test_session_from_field_22_without_a_frame_number():
    info = parse_frame_name(f"{HEAD}_5.8_10_30_{TAIL}_1.jpg")
    assert info.num_tokens == 23 and info.session == "S1"


def test_session_unreadable_is_none_not_an_error():
    info = parse_frame_name(f"{HEAD}_5.8_10_30_{TAIL}_X_000123.jpg")
    assert info.view == "aerial" and info.session is None


@pytest.mark.parametrize("name", ["0004_M_27_F_00001.jpg", "0004_00001.jpg", "0004_1_2_3.jpg",
                                  "0004_M_27_172_68_2_45_F_00001.jpg"])
def test_names_starting_with_an_integer_that_are_not_outdoor_are_ground(name):
    info = parse_frame_name(name)
    assert info.scheme == "ground" and info.view == "ground" and info.pid_token == "0004"


@pytest.mark.parametrize("fields, field_name", [
    ("nan_10_30", "height"), ("inf_10_30", "height"), ("-5_10_30", "height"), ("5.8_1e3_30", "distance"),
    ("5.8_10_95", "angle"), ("5.8_10_-90", "angle"), ("5.8_10_", "angle"), ("5.8_１０_30", "distance"),
])
def test_outdoor_name_with_an_unreadable_field_is_an_error_naming_file_and_field(fields, field_name):
    path = f"/data/train/0004/0004_1/{HEAD}_{fields}_{TAIL}_1_00001.jpg"
    with pytest.raises(ValueError) as err:
        parse_frame_name(path)
    assert path in str(err.value) and (field_name in str(err.value) or "non-ASCII digit" in str(err.value))


@pytest.mark.parametrize("date, field_name", [("31_02_2024_09_18", "day"), ("29_02_2023_09_18", "day"),
                                              ("00_10_2024_09_18", "day"), ("23_13_2024_09_18", "month"),
                                              ("23_10_2024_24_18", "hour"), ("23_10_2024_09_60", "minute"),
                                              ("2x_10_2024_09_18", "day")])
def test_impossible_dates_are_errors(date, field_name):
    path = f"0004_{date}_5.8_10_30_{TAIL}_1_00001.jpg"
    with pytest.raises(ValueError, match=field_name) as err:
        parse_frame_name(path)
    assert path in str(err.value)
    assert parse_frame_name(f"0004_29_02_2024_09_18_5.8_10_30_{TAIL}_1_00001.jpg").session == "S1"   # leap day


@pytest.mark.parametrize("name", ["0004_M_27_F_0000\u00b2.jpg", "0\u00b204_M_27_F_00001.jpg"])
def test_unicode_digits_in_a_frame_name_are_a_clear_error(name):
    with pytest.raises(ValueError, match="non-ASCII digit") as err:
        parse_frame_name(name)
    assert repr(name) in str(err.value)


# ----------------------------------------------------------------------------- both schemes
def test_parse_pins_real_outdoor_scheme_name():
    info = parse_frame_name(REAL_OUTDOOR)
    assert info.scheme == "outdoor" and info.view == "aerial"
    assert info.height == 5.8 and info.distance == 10 and info.angle == 30
    assert info.session == "S1" and info.pid_token == "0004"
    assert info.aerial_distance == pytest.approx(np.hypot(5.8, 10))


def test_parse_short_outdoor_prefix_as_in_method_md():
    # The example stem of method.md, with the soft-biometric tail cut short.
    info = parse_frame_name("0004_23_10_2024_09_18_5.8_10_30_3_S2_7.jpg")
    assert (info.height, info.distance, info.angle, info.session) == (5.8, 10.0, 30.0, "S2")


def test_parse_nadir_and_folder_path():
    info = parse_frame_name("/data/x/0012_24_10_2024_14_02_120_0_90_1_1_1_0_0_0_0_3_3_3_0_1_1_S2_00001.jpg")
    assert (info.height, info.distance, info.angle, info.session) == (120.0, 0.0, 90.0, "S2")
    assert info.aerial_distance == 120.0


def test_parse_ground_scheme():
    info = parse_frame_name("0004_M_27_172_68_2_45_F_00001.jpg")
    assert info.scheme == "ground" and info.view == "ground"
    assert info.height is None and info.session is None and info.pid_token == "0004"


@pytest.mark.parametrize("name", ["frame_0001.jpg", "img00001.jpg", "00001.jpg", "abc_M_27_172_68_2_45_F_1.jpg"])
def test_parse_unknown_scheme_is_an_error_naming_the_file(name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")) as err:
        parse_frame_name(name)
    assert "UNKNOWN_NAMES_AS_GROUND" in str(err.value)
    info = parse_frame_name(name, unknown_as_ground=True)
    assert info.view == "ground" and info.scheme == "unknown"


# ----------------------------------------------------------------------------- physical ranges
@pytest.mark.parametrize("fields, field_name", [
    ("1" + "0" * 197 + "_10_30", "height"),        # the campaign's 1e197 m, written out
    (f"{DOCS_MAX_HEIGHT_M + 0.5:g}_10_30", "height"),
    ("5.8_" + "9" * 40 + "_30", "distance"),
    (f"5.8_{DOCS_MAX_DISTANCE_M + 0.1:g}_30", "distance"),
])
def test_height_and_distance_outside_their_physical_range_are_refused_naming_file_and_field(fields, field_name):
    path = f"/data/train/0004/0004_1/{HEAD}_{fields}_{TAIL}_1_00001.jpg"
    with pytest.raises(ValueError) as err:
        parse_frame_name(path)
    message = str(err.value)
    assert repr(path) in message and f"({field_name})" in message and "physical" in message


def test_the_range_limits_themselves_parse():
    info = parse_frame_name(f"{HEAD}_{DOCS_MAX_HEIGHT_M:g}_{DOCS_MAX_DISTANCE_M:g}_90_{TAIL}_1_00001.jpg")
    assert (info.height, info.distance, info.angle) == (DOCS_MAX_HEIGHT_M, DOCS_MAX_DISTANCE_M, 90.0)
    info = parse_frame_name(f"{HEAD}_0_0_0_{TAIL}_1_00001.jpg")
    assert (info.height, info.distance, info.angle) == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- cameras
def test_the_camera_keys_of_tracklets_are_the_keys_of_the_camera_table():
    keys = {camera_key("ground", None), camera_key("aerial", "S2"), camera_key("aerial", None), camera_key("aerial", "S1")}
    assert standard_camera_index(keys) == {"ground": 0, "aerial-S1": 1, "aerial-S2": 2, "aerial-unknown": 3}


def test_session_numbering_is_stable_whichever_sessions_are_present():
    assert standard_camera_index({"ground", "aerial-S2"}) == {"ground": 0, "aerial-S2": 2}
    assert standard_camera_index({"ground", "aerial-S1", "aerial-S2", "aerial-unknown"}) == {
        "ground": 0, "aerial-S1": 1, "aerial-S2": 2, "aerial-unknown": 3}
    # A checkpoint that stored only its camera count: sessions 1..n-1.
    assert standard_camera_index(num_cameras=3) == {"ground": 0, "aerial-S1": 1, "aerial-S2": 2}


@pytest.mark.parametrize("name, session", [
    (f"{HEAD_WITH_CAPTURE}_{SOFT_12}_2_1", "S1"),            # 23 tokens: field 22 is the session, no frame number
    (f"{HEAD_WITH_CAPTURE}_{SOFT_12}_S2_00010", "S2"),       # 23 tokens: a soft field missing, explicit session
    (f"{HEAD_WITH_CAPTURE}_{SOFT_12}_2_00010", "S2"),        # 23 tokens: a soft field missing, bare session
    (f"{HEAD_WITH_CAPTURE}_{SOFT_12}_2_1_000123", "S1"),     # 24 tokens: the authors' tokens[-2]
    (f"{HEAD_WITH_CAPTURE}_{SOFT_12}_2_0_000123", None),     # session 0 is not a session
])
def test_session_of_ambiguous_names(name, session):
    assert parse_frame_name(name + ".jpg").session == session


# ----------------------------------------------------------------------------- properties (hypothesis)
def _decimal(upper: float) -> st.SearchStrategy[str]:
    """Plain decimals 0..upper as a name writes them: ``5``, ``5.8``, ``017.30``."""
    whole = st.integers(0, int(upper))
    fraction = st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=3).map(lambda f: "." + f))
    return st.tuples(whole, fraction, st.booleans()).map(
        lambda t: (f"0{t[0]}" if t[2] else str(t[0])) + t[1]).filter(lambda text: float(text) <= upper)


@st.composite
def outdoor_names(draw, height=None, distance=None):
    day = draw(st.dates(min_value=date(1990, 1, 1), max_value=date(2099, 12, 31)))
    tokens = [f"{draw(st.integers(0, 9999)):04d}", f"{day.day:02d}", f"{day.month:02d}", f"{day.year:04d}",
              f"{draw(st.integers(0, 23)):02d}", f"{draw(st.integers(0, 59)):02d}",
              draw(_decimal(MAX_HEIGHT_M) if height is None else height),
              draw(_decimal(MAX_DISTANCE_M) if distance is None else distance), draw(_decimal(90)),
              *draw(SOFT)]
    session = draw(st.integers(1, 9))
    tokens.append(draw(st.sampled_from([str(session), f"S{session}", f"s{session}"])))
    if draw(st.booleans()):
        tokens.append(f"{draw(st.integers(0, 10**6)):06d}")
    return "_".join(tokens) + draw(st.sampled_from([".jpg", ".png", ".JPEG"])), session


@pytest.mark.slow
@given(outdoor_names())
def test_valid_outdoor_names_parse_to_exactly_their_fields(case):
    name, session = case
    tokens = name.rsplit(".", 1)[0].split("_")
    info = parse_frame_name(f"/data/train/{tokens[0]}/{tokens[0]}_1/{name}")
    assert (info.scheme, info.view, info.pid_token) == ("outdoor", "aerial", tokens[0])
    assert (info.height, info.distance, info.angle) == tuple(float(t) for t in tokens[6:9])
    assert info.session == f"S{session}" and info.num_tokens == len(tokens)


@given(st.data(), st.sampled_from(["height", "distance"]))
def test_heights_and_distances_beyond_their_physical_range_are_refused(data, which):
    limit = int(MAX_HEIGHT_M if which == "height" else MAX_DISTANCE_M)
    beyond = st.one_of(st.integers(limit + 1, 10**200).map(str),                   # the campaign's 1e197 m, written out
                       st.integers(1, 999).map(lambda f: f"{limit}.{f:03d}"),       # just past the limit
                       st.integers(limit + 1, 10**6).map(lambda n: f"{n:08d}.5"))   # zero-padded
    name, _ = data.draw(outdoor_names(**{which: beyond}))
    path = f"/data/train/0001/0001_1/{name}"
    with pytest.raises(ValueError) as err:
        parse_frame_name(path)
    assert repr(path) in str(err.value) and f"({which})" in str(err.value) and "physical" in str(err.value)


@given(st.lists(NAME_ALPHABET, min_size=1, max_size=40).map("".join), st.booleans())
def test_any_name_is_parsed_in_range_or_refused_naming_the_file(stem, unknown_as_ground):
    path = f"/data/train/0001/0001_1/{stem}.jpg"
    try:
        info = parse_frame_name(path, unknown_as_ground=unknown_as_ground)
    except ValueError as exc:
        assert repr(path) in str(exc)
        return
    if info.scheme == "outdoor":
        for value, upper in ((info.height, MAX_HEIGHT_M), (info.distance, MAX_DISTANCE_M), (info.angle, 90.0)):
            assert math.isfinite(value) and 0 <= value <= upper
        assert info.session is None or re.fullmatch(r"S[1-9]", info.session)
    elif info.scheme == "ground":
        assert is_ascii_int(info.pid_token) and info.height is None and info.session is None
    else:
        assert unknown_as_ground and info.view == "ground"


@given(st.sampled_from(CAPTURE_POINTS), st.sampled_from([6, 7, 8]), SOFT)
def test_a_dropped_capture_field_never_reads_as_a_detreidx_capture_point(point, dropped, soft):
    tokens = ["0004", "23", "10", "2024", "09", "18", *(f"{v:g}" for v in point), *soft, "1", "000001"]
    del tokens[dropped]
    try:
        info = parse_frame_name("_".join(tokens) + ".jpg")
    except ValueError:
        return                                           # refused outright: also detected
    assert (info.height, info.distance, info.angle) not in {tuple(map(float, p)) for p in CAPTURE_POINTS}


def test_an_explicit_session_token_wins_over_a_bare_integer_before_the_frame_number():
    # 25 tokens: field 22 holds "S2", the token before the frame number a bare "1" (a soft-biometric value).
    assert parse_frame_name(f"{HEAD_WITH_CAPTURE}_{SOFT_12}_2_S2_1_000123.jpg").session == "S2"
    assert parse_frame_name(f"{HEAD_WITH_CAPTURE}_{SOFT_12}_2_1_S2_000123.jpg").session == "S2"
