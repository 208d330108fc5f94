"""Frame names as the authors write them, the view fixed by case folders, "what the scanner understood",
compact frame lists and the scan cache (issues 9.1, 9.6, 13.2, 13.3)."""
import dataclasses
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from datasets.detreidx import scan as scanner
from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.frames import FrameNames, FramePaths
from datasets.detreidx.names import CAPTURE_POINTS, parse_frame_name
from datasets.detreidx.records import Tracklet
from datasets.detreidx.scan import DatasetLayoutError
from datasets.detreidx.scan_cache import default_scan_cache_dir
from tests.datasets_fixtures import TINY, make_tiny_root
from utils.protocol import CASE_FOLDERS, natural_sort_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD = "0004_23_10_2024_09_18"
TAIL = "3_2_1_0_0_0_0_5_2_1_0_1_2"          # location .. drone scene (fields 9-21)


# ----------------------------------------------------------------------------- parser
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


# ----------------------------------------------------------------------------- compact frame lists
def _random_names(rng: np.random.Generator) -> list[str]:
    n = int(rng.integers(1, 40))
    family = int(rng.integers(5))
    numbers = np.sort(rng.choice(5000, size=n, replace=False)) if family != 1 else np.arange(n) * 3 + 7
    if family == 0:
        return [f"0004_M_27_F_{k:05d}.jpg" for k in numbers]         # padded, with gaps
    if family == 1:
        return [f"a_{k}.jpg" for k in numbers]                        # unpadded, evenly spaced
    if family == 2:
        return [f"x{k}y.png" for k in numbers]                        # unpadded, gaps
    if family == 3:
        return [f"f_{k:03d}.jpg" if i % 2 else f"f_{k}.jpg" for i, k in enumerate(numbers)]  # mixed padding
    return [f"{rng.choice(['a', 'b', 'c'])}_{k}.jpg" for k in numbers]  # no single template


def test_frame_names_equal_a_plain_sorted_list_on_random_names():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
        names = list(dict.fromkeys(_random_names(rng)))
        shuffled = [names[i] for i in rng.permutation(len(names))]
        compact = FrameNames.from_names(shuffled)
        oracle = sorted(shuffled, key=natural_sort_key)
        assert list(compact) == oracle and len(compact) == len(oracle)
        assert [compact[i] for i in range(-len(oracle), len(oracle))] == oracle + oracle
        assert compact[1:5] == oracle[1:5]
        assert FrameNames.from_names(oracle) == compact and hash(FrameNames.from_names(oracle)) == hash(compact)
        kept = FrameNames.from_names(shuffled, sort=False)
        assert list(kept) == shuffled
        kinds.add("joined" if compact._joined is not None else type(compact.numbers).__name__)
    assert kinds == {"joined", "range", "ndarray"}
    with pytest.raises(IndexError):
        FrameNames.from_names(["a_1.jpg"])[1]


def test_tracklet_accepts_a_tuple_of_paths_and_keeps_its_api():
    paths = ("d/x_3.jpg", "d/x_1.jpg", "d/x_2.jpg")
    t = Tracklet(paths, 1, 0, "ground", "1_1", None, None, None, None, None)
    assert isinstance(t.frames, FramePaths) and list(t.frames) == list(paths) and t.frames == paths
    assert t.folder == "d" and t.num_frames == 3 and t.frame_path(-1) == "d/x_2.jpg" and t.frames[0] == "d/x_3.jpg"
    assert dataclasses.replace(t, label=2).frames == t.frames and hash(t) == hash(dataclasses.replace(t))


# ----------------------------------------------------------------------------- scanning both name styles
@pytest.fixture(scope="module", params=["int", "S"])
def styled_root(request, tmp_path_factory):
    config = dataclasses.replace(TINY, session_style=request.param)
    return make_tiny_root(tmp_path_factory.mktemp(f"style_{request.param}"), config)


def test_both_name_styles_give_three_cameras_and_capture_points(styled_root):
    ds = DetReIDX(styled_root)
    assert ds.num_cameras == 3 and ds.camera_index == {"ground": 0, "aerial-S1": 1, "aerial-S2": 2}
    for t in ds.train:
        assert (t.camid == 0) == (t.view == "ground")
        if t.view == "aerial":
            assert t.camid == int(t.session[1:]) and t.capture_point in CAPTURE_POINTS
    summary = ds.scan_summary
    assert not summary.no_session and not summary.pid_mismatch and not summary.view_mismatch


def test_cli_prints_cameras_capture_points_and_what_the_scanner_understood(styled_root):
    proc = subprocess.run([sys.executable, "-m", "datasets.detreidx", "--root", styled_root], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "cameras: 3 [0=ground" in out and "1=aerial-S1" in out and "2=aerial-S2" in out
    assert "capture point (h/d/angle)" in out and "deg" in out
    ground_tokens = 5 if "style_int" in styled_root else 9
    assert "what the scanner understood:" in out
    assert f"name shapes in train: {ground_tokens} tokens x 12, 24 tokens x 24 (tracklets)" in out
    assert "aerial tracklets without a readable session (own camera 'aerial-unknown'): 0" in out
    assert "PID token disagrees with their PID folder: 0" in out
    assert "view disagrees with their case folder (folder wins): 0" in out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("names"))


@pytest.fixture
def root(pristine, tmp_path):
    copy = str(tmp_path / "xfd")
    shutil.copytree(pristine, copy)
    return copy


def _tracklet_dir(root, part, index=0, view=None):
    base = os.path.join(root, part)
    folders = [os.path.join(base, p, t) for p in sorted(os.listdir(base)) for t in sorted(os.listdir(os.path.join(base, p)))]
    if view is not None:
        folders = [f for f in folders if (len(sorted(os.listdir(f))[0].split("_")) > 8) == (view == "aerial")]
    return folders[index]


def _rename_frames(folder, rename):
    for frame in sorted(os.listdir(folder)):
        os.rename(os.path.join(folder, frame), os.path.join(folder, rename(frame)))


def test_case_folder_fixes_the_view_and_disagreements_are_reported(root, caplog):
    # Ground-style names in case 1's query (aerial): the tracklet stays aerial, without a session.
    folder = _tracklet_dir(root, os.path.join(CASE_FOLDERS[1], "query"))
    _rename_frames(folder, lambda f: "_".join(f.split("_")[:4] + f.split("_")[-1:]))
    # A PID token that differs from its PID folder, in train.
    other = _tracklet_dir(root, "train", view="aerial")
    _rename_frames(other, lambda f: "0999_" + f.split("_", 1)[1])
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(root)
    # one warning per kind of anomaly found (all three here)
    scan_warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Scan of")]
    assert len(scan_warnings) == 3 and all(not w.endswith(": 0") for w in scan_warnings)
    moved = next(t for t in ds.cases[1].query if t.folder == folder)
    assert moved.view == "aerial" and moved.session is None and moved.camid == ds.camera_index["aerial-unknown"]
    assert ds.num_cameras == 4
    summary = ds.scan_summary
    assert summary.view_mismatch == [folder] and summary.no_session == [folder] and summary.pid_mismatch == [other]
    table = ds.statistics_table()
    assert "view disagrees with their case folder (folder wins): 1" in table and repr(folder) in table
    assert "PID token disagrees with their PID folder: 1" in table


def test_outdoor_name_with_a_bad_field_stops_the_scan_naming_the_file(root):
    folder = _tracklet_dir(root, "train", view="aerial")
    _rename_frames(folder, lambda f: "_".join(f.split("_")[:6] + ["nan"] + f.split("_")[7:]))
    with pytest.raises(DatasetLayoutError, match="field 6 \\(height\\) 'nan'") as err:
        DetReIDX(root)
    assert folder in str(err.value)


def test_unicode_digit_in_a_frame_number_stops_the_scan_naming_the_file(root):
    folder = _tracklet_dir(root, "train")
    first = sorted(os.listdir(folder))[0]
    os.rename(os.path.join(folder, first), os.path.join(folder, first[:-5] + "\u00b2.jpg"))
    with pytest.raises(DatasetLayoutError, match="non-ASCII digit '\u00b2'") as err:
        DetReIDX(root)
    assert folder in str(err.value)


def test_first_and_last_frame_names_must_agree(root):
    folder = _tracklet_dir(root, "train", view="aerial")
    last = sorted(os.listdir(folder), key=natural_sort_key)[-1]
    tokens = last.split("_")
    tokens[-2] = "2" if tokens[-2] == "1" else "1"
    os.rename(os.path.join(folder, last), os.path.join(folder, "_".join(tokens)))
    with pytest.raises(DatasetLayoutError, match="frame names say different things") as err:
        DetReIDX(root)
    assert repr(folder) in str(err.value)


def test_one_name_is_parsed_per_tracklet_plus_the_last_as_a_check(root, monkeypatch):
    calls = []
    real = scanner.parse_frame_name
    monkeypatch.setattr(scanner, "parse_frame_name", lambda name, *a: calls.append(name) or real(name, *a))
    ds = DetReIDX(root)
    scanned = ds.train + [t for s in ds.cases.values() for t in s.query + s.gallery]
    assert len(calls) == 2 * len(scanned) < sum(t.num_frames for t in scanned)


@pytest.mark.parametrize("bad", ["0004_1 2", "0004_3,", "0004_\"5\"", "0004_'6", "0004_x", "0004_1\u00b2"])
def test_unusable_tracklet_names_stop_the_scan(root, bad):
    pid_dir = os.path.join(root, "train", "0004")
    source = os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0])
    shutil.copytree(source, os.path.join(pid_dir, bad))
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(root)
    message = str(err.value)
    assert message.startswith("1 tracklet folder name(s) cannot go into the submission CSV")
    assert repr(os.path.join(pid_dir, bad)) in message


def test_many_unusable_tracklet_names_give_one_message_with_the_first_ten(root):
    pid_dir = os.path.join(root, "train", "0004")
    source = os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0])
    bad = [f"0004_{i} copy" for i in range(12)] + ["0004_name"]
    for name in bad:
        shutil.copytree(source, os.path.join(pid_dir, name))
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(root)
    message = str(err.value)
    assert message.startswith("13 tracklet folder name(s)") and "First 10:" in message
    assert sum(repr(os.path.join(pid_dir, n)) in message for n in bad) == 10
    # Under the camera junk rule a name need not be {pid}_{tid}; whitespace still cannot go into a CSV.
    for name in bad[:-1]:
        shutil.rmtree(os.path.join(pid_dir, name))
    assert DetReIDX(root, junk_rule="camera").train
    with pytest.raises(DatasetLayoutError, match="1 tracklet folder"):
        DetReIDX(root)


@pytest.mark.parametrize("pid_name, why", [("0031 ", "is not an integer"), ("00\u00b21", "non-ASCII digit '\u00b2'")])
def test_pid_folder_errors_quote_the_name(root, pid_name, why):
    os.makedirs(os.path.join(root, "train", pid_name, "0031_1"))
    with pytest.raises(DatasetLayoutError, match=why) as err:
        DetReIDX(root)
    assert repr(os.path.join(root, "train", pid_name)) in str(err.value)


# ----------------------------------------------------------------------------- scan cache
def _age(root, seconds=60.0):
    """Make every folder look ``seconds`` old (the cache is only written for settled trees)."""
    stamp = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (stamp, stamp))


def _signature(ds):
    return [(t.pid, t.name, t.camid, t.view, t.session, t.capture_point, list(t.frames), t.label)
            for t in ds._unique_tracklets()]


def test_scan_cache_skips_the_frame_listing_and_notices_changes(root, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    _age(root)
    first = DetReIDX(root, scan_cache_dir=cache)
    assert not first.scan_summary.from_cache and len(os.listdir(cache)) == 1

    listed = []
    real = scanner._list_frame_names
    monkeypatch.setattr(scanner, "_list_frame_names", lambda folder: listed.append(folder) or real(folder))
    second = DetReIDX(root, scan_cache_dir=cache)
    assert second.scan_summary.from_cache and not listed
    assert _signature(second) == _signature(first)
    assert second.statistics_table().split("what the scanner")[0] == first.statistics_table().split("what the scanner")[0]

    # A frame added to one tracklet changes its folder's mtime: that start scans again.
    folder = second.train[0].folder
    frame = sorted(os.listdir(folder), key=natural_sort_key)[-1]
    number = frame.rsplit("_", 1)[1].split(".")[0]
    shutil.copy(os.path.join(folder, frame), os.path.join(folder, frame.replace(number, f"{int(number) + 1:05d}")))
    third = DetReIDX(root, scan_cache_dir=cache)
    assert not third.scan_summary.from_cache and listed
    assert next(t for t in third.train if t.folder == folder).num_frames == second.train[0].num_frames + 1


def test_scan_cache_is_not_written_for_a_tree_that_just_changed_or_when_off(root, tmp_path):
    cache = str(tmp_path / "cache")
    os.utime(_tracklet_dir(root, "train"))            # a folder changed a moment ago: racy, not cached
    DetReIDX(root, scan_cache_dir=cache)
    assert not os.path.exists(cache)
    _age(root)
    DetReIDX(root, scan_cache_dir="")
    assert not os.path.exists(cache)


def test_damaged_scan_cache_is_ignored(root, tmp_path):
    cache = str(tmp_path / "cache")
    _age(root)
    DetReIDX(root, scan_cache_dir=cache)
    path = os.path.join(cache, os.listdir(cache)[0])
    with open(path, "r+b") as f:
        f.truncate(100)
    again = DetReIDX(root, scan_cache_dir=cache)
    assert not again.scan_summary.from_cache and again.train


def test_build_dataset_passes_the_cache_folder_and_the_junk_rule(root, tmp_path):
    from datasets.build import build_dataset
    from tests.datasets_fixtures import tiny_cfg
    cache = str(tmp_path / "cache")
    pid_dir = os.path.join(root, "train", "0004")
    shutil.copytree(os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0]), os.path.join(pid_dir, "0004_name"))
    _age(root)
    with pytest.raises(DatasetLayoutError, match="0004_name"):
        build_dataset(tiny_cfg(root, "DATASETS.SCAN_CACHE_DIR", cache))
    dataset = build_dataset(tiny_cfg(root, "DATASETS.SCAN_CACHE_DIR", cache, "TEST.JUNK_RULE", "camera"))
    assert any(t.name == "0004_name" for t in dataset.train) and len(os.listdir(cache)) == 1
    assert default_scan_cache_dir().endswith(os.path.join("sas_vpreid", "scan"))
