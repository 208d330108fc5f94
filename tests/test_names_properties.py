"""Property-based tests (hypothesis) of frame-name parsing and compact frame lists, beside the seeded fuzz
loop of tests/faults/test_name_fuzz.py: hypothesis searches the input space and shrinks a failure to a
minimal name. Deterministic (derandomized, no example database), so a failure reproduces everywhere."""
import math
import os
import re
import tempfile
from datetime import date

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# Hypothesis keeps a folder of its own (constants, Unicode tables); never in the repository.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "sas_vpreid_hypothesis"))

from datasets.detreidx.frames import FrameNames  # noqa: E402
from datasets.detreidx.names import CAPTURE_POINTS, MAX_DISTANCE_M, MAX_HEIGHT_M, parse_frame_name  # noqa: E402
from utils.protocol import is_ascii_int, natural_sort_key  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None)
SOFT = st.lists(st.integers(0, 29).map(str), min_size=13, max_size=13)       # location .. drone scene


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


@SETTINGS
@given(outdoor_names())
def test_valid_outdoor_names_parse_to_exactly_their_fields(case):
    name, session = case
    tokens = name.rsplit(".", 1)[0].split("_")
    info = parse_frame_name(f"/data/train/{tokens[0]}/{tokens[0]}_1/{name}")
    assert (info.scheme, info.view, info.pid_token) == ("outdoor", "aerial", tokens[0])
    assert (info.height, info.distance, info.angle) == tuple(float(t) for t in tokens[6:9])
    assert info.session == f"S{session}" and info.num_tokens == len(tokens)


@SETTINGS
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


NAME_ALPHABET = st.sampled_from(list("0123456789_._SsxM-+ e") + ["nan", "inf", "\u00b2", "\u0663", "\uff15", "12", "2024"])


@SETTINGS
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


@SETTINGS
@given(st.sampled_from(CAPTURE_POINTS), st.sampled_from([6, 7, 8]), SOFT)
def test_a_dropped_capture_field_never_reads_as_a_detreidx_capture_point(point, dropped, soft):
    tokens = ["0004", "23", "10", "2024", "09", "18", *(f"{v:g}" for v in point), *soft, "1", "000001"]
    del tokens[dropped]
    try:
        info = parse_frame_name("_".join(tokens) + ".jpg")
    except ValueError:
        return                                           # refused outright: also detected
    assert (info.height, info.distance, info.angle) not in {tuple(map(float, p)) for p in CAPTURE_POINTS}


frame_numbers = st.lists(st.integers(0, 10**7), min_size=1, max_size=60, unique=True)


@SETTINGS
@given(frame_numbers, st.sampled_from(["0004_M_27_F_", "a_", "x", "0004_23_10_2024_09_18_5.8_10_30_1_"]),
       st.sampled_from([".jpg", "y.png", ""]), st.integers(0, 8), st.randoms(use_true_random=False))
def test_compact_frame_names_equal_the_naturally_sorted_list(numbers, prefix, suffix, width, rng):
    names = [f"{prefix}{n:0{width}d}{suffix}" for n in numbers]
    names = list(dict.fromkeys(names))
    shuffled = names[:]
    rng.shuffle(shuffled)
    compact = FrameNames.from_names(shuffled)
    oracle = sorted(shuffled, key=natural_sort_key)
    assert list(compact) == oracle and len(compact) == len(oracle)
    assert [compact[i] for i in range(-len(oracle), len(oracle))] == oracle + oracle
    assert list(FrameNames.from_names(shuffled, sort=False)) == shuffled
    assert FrameNames.from_names(oracle) == compact and hash(FrameNames.from_names(oracle)) == hash(compact)


@SETTINGS
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1,
                        max_size=12), min_size=1, max_size=20, unique=True))
def test_compact_frame_names_keep_any_names(names):
    assert list(FrameNames.from_names(names, sort=False)) == names
    assert list(FrameNames.from_names(names)) == sorted(names, key=natural_sort_key)
