"""Frame names and tracklet folders the scanner must not read silently wrong (issue 20.6): physical
height/distance ranges, outdoor-length names that are not outdoor-shaped, shifted fields, hidden files,
unreadable or looping folders, tabs and newlines in tracklet names."""
import os
import shutil
import subprocess
import sys

import pytest

from datasets.detreidx import scan as scanner
from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.names import CAPTURE_POINTS, parse_frame_name
from datasets.detreidx.scan import DatasetLayoutError
from tests.datasets_fixtures import make_tiny_root
from utils.protocol import natural_sort_key

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD = "0004_23_10_2024_09_18"
TAIL = "3_2_1_0_0_0_0_5_2_1_0_1_2"          # location .. drone scene (fields 9-21)
MAX_HEIGHT_M, MAX_DISTANCE_M = 500.0, 1000.0  # the physical ranges of docs/data.md (Frame names)


# ----------------------------------------------------------------------------- physical ranges
@pytest.mark.parametrize("fields, field_name", [
    ("1" + "0" * 197 + "_10_30", "height"),        # the campaign's 1e197 m, written out
    (f"{MAX_HEIGHT_M + 0.5:g}_10_30", "height"),
    ("5.8_" + "9" * 40 + "_30", "distance"),
    (f"5.8_{MAX_DISTANCE_M + 0.1:g}_30", "distance"),
])
def test_height_and_distance_outside_their_physical_range_are_refused_naming_file_and_field(fields, field_name):
    path = f"/data/train/0004/0004_1/{HEAD}_{fields}_{TAIL}_1_00001.jpg"
    with pytest.raises(ValueError) as err:
        parse_frame_name(path)
    message = str(err.value)
    assert repr(path) in message and f"({field_name})" in message and "physical" in message


def test_the_range_limits_themselves_parse():
    info = parse_frame_name(f"{HEAD}_{MAX_HEIGHT_M:g}_{MAX_DISTANCE_M:g}_90_{TAIL}_1_00001.jpg")
    assert (info.height, info.distance, info.angle) == (MAX_HEIGHT_M, MAX_DISTANCE_M, 90.0)
    info = parse_frame_name(f"{HEAD}_0_0_0_{TAIL}_1_00001.jpg")
    assert (info.height, info.distance, info.angle) == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- scanned roots
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("ranges"))


@pytest.fixture
def root(pristine, tmp_path):
    copy = str(tmp_path / "xfd")
    shutil.copytree(pristine, copy)
    return copy


def _aerial_train_folder(root: str, index: int = 0) -> str:
    base = os.path.join(root, "train")
    folders = [os.path.join(base, p, t) for p in sorted(os.listdir(base)) for t in sorted(os.listdir(os.path.join(base, p)))]
    return [f for f in folders if len(sorted(os.listdir(f))[0].split("_")) > 20][index]


def _rename_frames(folder: str, rename) -> None:
    for frame in sorted(os.listdir(folder)):
        os.rename(os.path.join(folder, frame), os.path.join(folder, rename(frame)))


def _scan_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.getMessage().startswith("Scan of")]


def test_an_aerial_name_with_an_extra_token_is_a_warning_line_not_only_a_shape_count(root, caplog):
    # The campaign's 0042_x_23_10_2024_11_47_...: 25 tokens, read as ground camera 0.
    folder = _aerial_train_folder(root)
    _rename_frames(folder, lambda f: f.replace("_", "_x_", 1))
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(root)
    tracklet = next(t for t in ds.train if t.folder == folder)
    assert tracklet.view == "ground" and tracklet.camid == 0       # what the name says, now reported
    assert ds.scan_summary.not_outdoor_shaped == [folder]
    warned = [w for w in _scan_warnings(caplog) if "outdoor-length" in w]
    assert len(warned) == 1 and warned[0].endswith(f": 1, e.g. {folder!r}")
    assert "not outdoor-shaped (PID_DD_MM_YYYY_HH_MM_...), so read as ground: check for an extra or missing token: 1" \
        in ds.statistics_table()


def test_short_and_long_ground_names_are_not_reported(root, caplog):
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(root)
    assert any(t.view == "ground" for t in ds.train)
    assert ds.scan_summary.not_outdoor_shaped == [] and ds.scan_summary.odd_capture_point == []
    assert _scan_warnings(caplog) == []


@pytest.mark.parametrize("dropped", [6, 7])
def test_a_dropped_field_that_shifts_the_capture_point_is_reported(root, caplog, dropped):
    folder = _aerial_train_folder(root)
    _rename_frames(folder, lambda f: "_".join(t for i, t in enumerate(f.split("_")) if i != dropped))
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(root)
    shifted = next(t for t in ds.train if t.folder == folder)
    assert shifted.view == "aerial" and shifted.capture_point not in set(CAPTURE_POINTS)
    assert ds.scan_summary.odd_capture_point == [folder]
    warned = [w for w in _scan_warnings(caplog) if "none of DetReIDX's 18 capture points" in w]
    assert len(warned) == 1 and repr(folder) in warned[0]


# ----------------------------------------------------------------------------- hidden files, unreadable folders
def test_hidden_frame_files_are_skipped_like_hidden_folders(root):
    folder = _aerial_train_folder(root)
    before = DetReIDX(root)
    frames = sorted(os.listdir(folder), key=natural_sort_key)
    with open(os.path.join(folder, "._" + frames[0]), "wb") as f:     # a macOS AppleDouble file
        f.write(b"\x00\x05\x16\x07" + b"\x00" * 60)
    with open(os.path.join(folder, ".hidden.jpg"), "wb") as f:
        f.write(b"x")
    os.makedirs(os.path.join(root, "train", "0001", ".thumbnails"))
    after = DetReIDX(root)
    tracklet = next(t for t in after.train if t.folder == folder)
    assert [os.path.basename(p) for p in tracklet.frames] == frames
    assert [(t.name, t.num_frames) for t in after.train] == [(t.name, t.num_frames) for t in before.train]


def _assert_one_error_naming(err, path, *words):
    message = str(err.value)
    assert "\n" not in message and repr(path) in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("level", ["tracklet", "pid"])
def test_a_looping_symlink_folder_stops_the_scan_naming_it(root, level):
    where = os.path.join(root, "train", "0001", "0001_99") if level == "tracklet" else os.path.join(root, "train", "0099")
    os.symlink(os.path.basename(where), where)             # a link to itself: ELOOP
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(root)
    _assert_one_error_naming(err, where, "symbolic link that loops", "cannot be read")


def test_a_dangling_symlink_folder_stops_the_scan_naming_it(root):
    where = os.path.join(root, "case1_aerial_to_ground", "gallery", sorted(os.listdir(
        os.path.join(root, "case1_aerial_to_ground", "gallery")))[0], "0001_98")
    os.symlink("/nonexistent/elsewhere", where)
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(root)
    _assert_one_error_naming(err, where, "points nowhere", "submission")


def test_a_symlink_to_a_real_tracklet_folder_is_scanned(root):
    source = _aerial_train_folder(root)
    link = os.path.join(os.path.dirname(source), os.path.basename(os.path.dirname(source)) + "_77")
    os.symlink(source, link)
    ds = DetReIDX(root)
    assert next(t for t in ds.train if t.name == os.path.basename(link)).num_frames == len(os.listdir(source))


def test_a_tracklet_folder_without_read_permission_stops_the_scan_naming_it(root, monkeypatch):
    # Tests may run as root, whom chmod does not stop: the permission answer is stood in.
    folder = _aerial_train_folder(root)
    real = os.access
    monkeypatch.setattr(scanner.os, "access", lambda path, mode, *a, **k: path != folder and real(path, mode, *a, **k))
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(root)
    _assert_one_error_naming(err, folder, "cannot be read", "chmod")


def test_a_tracklet_folder_that_cannot_be_listed_is_one_error_naming_it(root, monkeypatch):
    folder = _aerial_train_folder(root)
    real = scanner._list_frame_names

    def listing(path):
        if path == folder:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(scanner, "_list_frame_names", listing)
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(root)
    _assert_one_error_naming(err, folder, "cannot be listed (Permission denied)", "chmod")


def test_cli_reports_a_looping_folder_in_one_line_without_traceback(root):
    where = os.path.join(root, "train", "0002", "0002_99")
    os.symlink("0002_99", where)
    proc = subprocess.run([sys.executable, "-m", "datasets.detreidx", "--root", root], cwd=ROOT_DIR,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and repr(where) in lines[0], proc.stderr


# ----------------------------------------------------------------------------- tracklet names
@pytest.mark.parametrize("name, why", [("0004_1\t2", "whitespace ('\\t')"), ("0004_1\n2", "a line break ('\\n')"),
                                       ("0004_1\r", "a line break ('\\r')")])
def test_tab_or_newline_in_a_tracklet_name_stops_the_scan_naming_it(root, name, why):
    pid_dir = os.path.join(root, "train", "0004")
    shutil.copytree(os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0]), os.path.join(pid_dir, name))
    for junk_rule in ("tracklet", "camera"):
        with pytest.raises(DatasetLayoutError) as err:
            DetReIDX(root, junk_rule=junk_rule)
        message = str(err.value)
        assert message.startswith("1 tracklet folder name(s) cannot go into the submission CSV")
        assert f"{os.path.join(pid_dir, name)!r} contains {why}" in message
