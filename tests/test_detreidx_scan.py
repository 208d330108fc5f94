"""The DetReIDX scanner (datasets/detreidx/scan.py), through DetReIDX on copies of the tiny root: layout errors
that name the path and the layout, the view fixed by the case folder, names that stop the scan (a bad field, a
Unicode digit, first and last frame disagreeing, tracklet names that cannot go into the submission CSV), what the
scanner reports of names that parse but look wrong, hidden files, unreadable or looping folders (issues 9.1, 9.6,
13.2, 13.3, 20.6)."""
import os
import shutil

import pytest

from datasets.detreidx import scan as scanner
from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.names import CAPTURE_POINTS
from datasets.detreidx.scan import DatasetLayoutError
from tests.helpers.data import find_tracklet_folder
from utils.protocol import CASE_FOLDERS, natural_sort_key


# ----------------------------------------------------------------------------- layout errors
def test_missing_root(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match="nope.*does not exist.*DATASETS.ROOT_DIR"):
        DetReIDX(missing)


def test_missing_case_folder(tiny_root_copy):
    shutil.rmtree(os.path.join(tiny_root_copy, CASE_FOLDERS[2]))
    with pytest.raises(DatasetLayoutError, match="case2_ground_to_aerial"):
        DetReIDX(tiny_root_copy)


def test_missing_gallery_folder(tiny_root_copy):
    shutil.rmtree(os.path.join(tiny_root_copy, CASE_FOLDERS[3], "gallery"))
    with pytest.raises(DatasetLayoutError, match=r"case3_aerial_to_aerial.gallery"):
        DetReIDX(tiny_root_copy)


def test_train_only_root_has_no_cases(tiny_root_copy):
    for folder in CASE_FOLDERS.values():
        shutil.rmtree(os.path.join(tiny_root_copy, folder))
    ds = DetReIDX(tiny_root_copy)
    assert ds.cases == {} and ds.num_train_pids == 6


def test_non_integer_pid_folder(tiny_root_copy):
    os.rename(os.path.join(tiny_root_copy, "train", "0001"), os.path.join(tiny_root_copy, "train", "person1"))
    with pytest.raises(DatasetLayoutError, match="person1.*not an integer"):
        DetReIDX(tiny_root_copy)


def test_empty_tracklet_folder(tiny_root_copy):
    folder = find_tracklet_folder(tiny_root_copy)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    with pytest.raises(DatasetLayoutError, match=f"{os.path.basename(folder)}.*no frames"):
        DetReIDX(tiny_root_copy)


def test_unknown_frame_name(tiny_root_copy):
    folder = find_tracklet_folder(tiny_root_copy)
    first = sorted(os.listdir(folder))[0]
    os.rename(os.path.join(folder, first), os.path.join(folder, "frame_0001.jpg"))
    with pytest.raises(DatasetLayoutError, match="frame_0001.jpg.*UNKNOWN_NAMES_AS_GROUND"):
        DetReIDX(tiny_root_copy)


def test_unknown_frame_name_as_ground(tiny_root_copy):
    folder = find_tracklet_folder(tiny_root_copy)
    for i, name in enumerate(sorted(os.listdir(folder))):
        os.rename(os.path.join(folder, name), os.path.join(folder, f"frame_{i:04d}.jpg"))
    ds = DetReIDX(tiny_root_copy, unknown_names_as_ground=True)
    tracklet = next(t for t in ds.train if t.folder == folder)
    assert tracklet.view == "ground" and tracklet.camid == 0


def test_same_tracklet_name_under_two_pids_in_a_case(tiny_root_copy):
    query = os.path.join(tiny_root_copy, CASE_FOLDERS[1], "query")
    gallery = os.path.join(tiny_root_copy, CASE_FOLDERS[1], "gallery")
    pids = sorted(os.listdir(gallery))
    victim = find_tracklet_folder(tiny_root_copy, os.path.join(CASE_FOLDERS[1], "query"))
    other_pid = next(p for p in pids if p != os.path.basename(os.path.dirname(victim)))
    shutil.copytree(victim, os.path.join(gallery, other_pid, os.path.basename(victim)))
    with pytest.raises(DatasetLayoutError, match=f"{os.path.basename(victim)}.*two PIDs.*case1_aerial_to_ground"):
        DetReIDX(tiny_root_copy)
    assert os.path.isdir(query)


def test_tracklet_mixing_views_is_an_error(tiny_root_copy):
    ds = DetReIDX(tiny_root_copy)
    ground = next(t for t in ds.train if t.view == "ground")
    aerial = next(t for t in ds.train if t.view == "aerial")
    shutil.copy(ground.frames[0], aerial.folder)
    with pytest.raises(DatasetLayoutError, match=f"{aerial.name}.*mixes aerial and ground"):
        DetReIDX(tiny_root_copy)


def _rename_frames(folder, rename):
    for frame in sorted(os.listdir(folder)):
        os.rename(os.path.join(folder, frame), os.path.join(folder, rename(frame)))


# ----------------------------------------------------------------------------- names
@pytest.mark.slow
def test_case_folder_fixes_the_view_and_disagreements_are_reported(tiny_root_copy, caplog):
    # Ground-style names in case 1's query (aerial): the tracklet stays aerial, without a session.
    folder = find_tracklet_folder(tiny_root_copy, os.path.join(CASE_FOLDERS[1], "query"))
    _rename_frames(folder, lambda f: "_".join(f.split("_")[:4] + f.split("_")[-1:]))
    # A PID token that differs from its PID folder, in train.
    other = find_tracklet_folder(tiny_root_copy, view="aerial")
    _rename_frames(other, lambda f: "0999_" + f.split("_", 1)[1])
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(tiny_root_copy)
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


def test_outdoor_name_with_a_bad_field_stops_the_scan_naming_the_file(tiny_root_copy):
    folder = find_tracklet_folder(tiny_root_copy, view="aerial")
    _rename_frames(folder, lambda f: "_".join(f.split("_")[:6] + ["nan"] + f.split("_")[7:]))
    with pytest.raises(DatasetLayoutError, match="field 6 \\(height\\) 'nan'") as err:
        DetReIDX(tiny_root_copy)
    assert folder in str(err.value)


def test_unicode_digit_in_a_frame_number_stops_the_scan_naming_the_file(tiny_root_copy):
    folder = find_tracklet_folder(tiny_root_copy)
    first = sorted(os.listdir(folder))[0]
    os.rename(os.path.join(folder, first), os.path.join(folder, first[:-5] + "\u00b2.jpg"))
    with pytest.raises(DatasetLayoutError, match="non-ASCII digit '\u00b2'") as err:
        DetReIDX(tiny_root_copy)
    assert folder in str(err.value)


def test_first_and_last_frame_names_must_agree(tiny_root_copy):
    folder = find_tracklet_folder(tiny_root_copy, view="aerial")
    last = sorted(os.listdir(folder), key=natural_sort_key)[-1]
    tokens = last.split("_")
    tokens[-2] = "2" if tokens[-2] == "1" else "1"
    os.rename(os.path.join(folder, last), os.path.join(folder, "_".join(tokens)))
    with pytest.raises(DatasetLayoutError, match="frame names say different things") as err:
        DetReIDX(tiny_root_copy)
    assert repr(folder) in str(err.value)


def test_one_name_is_parsed_per_tracklet_plus_the_last_as_a_check(tiny_root_copy, monkeypatch):
    calls = []
    real = scanner.parse_frame_name
    monkeypatch.setattr(scanner, "parse_frame_name", lambda name, *a: calls.append(name) or real(name, *a))
    ds = DetReIDX(tiny_root_copy)
    scanned = ds.train + [t for s in ds.cases.values() for t in s.query + s.gallery]
    assert len(calls) == 2 * len(scanned) < sum(t.num_frames for t in scanned)


@pytest.mark.parametrize("bad", ["0004_1 2", "0004_3,", "0004_\"5\"", "0004_'6", "0004_x", "0004_1\u00b2"])
def test_unusable_tracklet_names_stop_the_scan(tiny_root_copy, bad):
    pid_dir = os.path.join(tiny_root_copy, "train", "0004")
    source = os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0])
    shutil.copytree(source, os.path.join(pid_dir, bad))
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(tiny_root_copy)
    message = str(err.value)
    assert message.startswith("1 tracklet folder name(s) cannot go into the submission CSV")
    assert repr(os.path.join(pid_dir, bad)) in message


def test_many_unusable_tracklet_names_give_one_message_with_the_first_ten(tiny_root_copy):
    pid_dir = os.path.join(tiny_root_copy, "train", "0004")
    source = os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0])
    bad = [f"0004_{i} copy" for i in range(12)] + ["0004_name"]
    for name in bad:
        shutil.copytree(source, os.path.join(pid_dir, name))
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(tiny_root_copy)
    message = str(err.value)
    assert message.startswith("13 tracklet folder name(s)") and "First 10:" in message
    assert sum(repr(os.path.join(pid_dir, n)) in message for n in bad) == 10
    # Under the camera junk rule a name need not be {pid}_{tid}; whitespace still cannot go into a CSV.
    for name in bad[:-1]:
        shutil.rmtree(os.path.join(pid_dir, name))
    assert DetReIDX(tiny_root_copy, junk_rule="camera").train
    with pytest.raises(DatasetLayoutError, match="1 tracklet folder"):
        DetReIDX(tiny_root_copy)


@pytest.mark.parametrize("pid_name, why", [("0031 ", "is not an integer"), ("00\u00b21", "non-ASCII digit '\u00b2'")])
def test_pid_folder_errors_quote_the_name(tiny_root_copy, pid_name, why):
    os.makedirs(os.path.join(tiny_root_copy, "train", pid_name, "0031_1"))
    with pytest.raises(DatasetLayoutError, match=why) as err:
        DetReIDX(tiny_root_copy)
    assert repr(os.path.join(tiny_root_copy, "train", pid_name)) in str(err.value)


# ----------------------------------------------------------------------------- what the scanner reports
def _scan_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.getMessage().startswith("Scan of")]


def test_an_aerial_name_with_an_extra_token_is_a_warning_line_not_only_a_shape_count(tiny_root_copy, caplog):
    # The campaign's 0042_x_23_10_2024_11_47_...: 25 tokens, read as ground camera 0.
    folder = find_tracklet_folder(tiny_root_copy, view="aerial")
    _rename_frames(folder, lambda f: f.replace("_", "_x_", 1))
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(tiny_root_copy)
    tracklet = next(t for t in ds.train if t.folder == folder)
    assert tracklet.view == "ground" and tracklet.camid == 0       # what the name says, now reported
    assert ds.scan_summary.not_outdoor_shaped == [folder]
    warned = [w for w in _scan_warnings(caplog) if "outdoor-length" in w]
    assert len(warned) == 1 and warned[0].endswith(f": 1, e.g. {folder!r}")
    assert "not outdoor-shaped (PID_DD_MM_YYYY_HH_MM_...), so read as ground: check for an extra or missing token: 1" \
        in ds.statistics_table()


def test_short_and_long_ground_names_are_not_reported(tiny_root_copy, caplog):
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(tiny_root_copy)
    assert any(t.view == "ground" for t in ds.train)
    assert ds.scan_summary.not_outdoor_shaped == [] and ds.scan_summary.odd_capture_point == []
    assert _scan_warnings(caplog) == []


@pytest.mark.parametrize("dropped", [6, 7])
def test_a_dropped_field_that_shifts_the_capture_point_is_reported(tiny_root_copy, caplog, dropped):
    folder = find_tracklet_folder(tiny_root_copy, view="aerial")
    _rename_frames(folder, lambda f: "_".join(t for i, t in enumerate(f.split("_")) if i != dropped))
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        ds = DetReIDX(tiny_root_copy)
    shifted = next(t for t in ds.train if t.folder == folder)
    assert shifted.view == "aerial" and shifted.capture_point not in set(CAPTURE_POINTS)
    assert ds.scan_summary.odd_capture_point == [folder]
    warned = [w for w in _scan_warnings(caplog) if "none of DetReIDX's 18 capture points" in w]
    assert len(warned) == 1 and repr(folder) in warned[0]


# ----------------------------------------------------------------------------- hidden files, unreadable folders
def test_hidden_frame_files_are_skipped_like_hidden_folders(tiny_root_copy):
    folder = find_tracklet_folder(tiny_root_copy, view="aerial")
    before = DetReIDX(tiny_root_copy)
    frames = sorted(os.listdir(folder), key=natural_sort_key)
    with open(os.path.join(folder, "._" + frames[0]), "wb") as f:     # a macOS AppleDouble file
        f.write(b"\x00\x05\x16\x07" + b"\x00" * 60)
    with open(os.path.join(folder, ".hidden.jpg"), "wb") as f:
        f.write(b"x")
    os.makedirs(os.path.join(tiny_root_copy, "train", "0001", ".thumbnails"))
    after = DetReIDX(tiny_root_copy)
    tracklet = next(t for t in after.train if t.folder == folder)
    assert [os.path.basename(p) for p in tracklet.frames] == frames
    assert [(t.name, t.num_frames) for t in after.train] == [(t.name, t.num_frames) for t in before.train]


def _assert_one_error_naming(err, path, *words):
    message = str(err.value)
    assert "\n" not in message and repr(path) in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("level", ["tracklet", "pid"])
def test_a_looping_symlink_folder_stops_the_scan_naming_it(tiny_root_copy, level):
    where = os.path.join(tiny_root_copy, "train", "0001", "0001_99") if level == "tracklet" else os.path.join(tiny_root_copy, "train", "0099")
    os.symlink(os.path.basename(where), where)             # a link to itself: ELOOP
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(tiny_root_copy)
    _assert_one_error_naming(err, where, "symbolic link that loops", "cannot be read")


def test_a_dangling_symlink_folder_stops_the_scan_naming_it(tiny_root_copy):
    where = os.path.join(tiny_root_copy, "case1_aerial_to_ground", "gallery", sorted(os.listdir(
        os.path.join(tiny_root_copy, "case1_aerial_to_ground", "gallery")))[0], "0001_98")
    os.symlink("/nonexistent/elsewhere", where)
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(tiny_root_copy)
    _assert_one_error_naming(err, where, "points nowhere", "submission")


def test_a_symlink_to_a_real_tracklet_folder_is_scanned(tiny_root_copy):
    source = find_tracklet_folder(tiny_root_copy, view="aerial")
    link = os.path.join(os.path.dirname(source), os.path.basename(os.path.dirname(source)) + "_77")
    os.symlink(source, link)
    ds = DetReIDX(tiny_root_copy)
    assert next(t for t in ds.train if t.name == os.path.basename(link)).num_frames == len(os.listdir(source))


def test_a_tracklet_folder_without_read_permission_stops_the_scan_naming_it(tiny_root_copy, monkeypatch):
    # Tests may run as root, whom chmod does not stop: the permission answer is stood in.
    folder = find_tracklet_folder(tiny_root_copy, view="aerial")
    real = os.access
    monkeypatch.setattr(scanner.os, "access", lambda path, mode, *a, **k: path != folder and real(path, mode, *a, **k))
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(tiny_root_copy)
    _assert_one_error_naming(err, folder, "cannot be read", "chmod")


def test_a_tracklet_folder_that_cannot_be_listed_is_one_error_naming_it(tiny_root_copy, monkeypatch):
    folder = find_tracklet_folder(tiny_root_copy, view="aerial")
    real = scanner._list_frame_names

    def listing(path):
        if path == folder:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(scanner, "_list_frame_names", listing)
    with pytest.raises(DatasetLayoutError) as err:
        DetReIDX(tiny_root_copy)
    _assert_one_error_naming(err, folder, "cannot be listed (Permission denied)", "chmod")


# ----------------------------------------------------------------------------- tracklet names
@pytest.mark.parametrize("name, why", [("0004_1\t2", "whitespace ('\\t')"), ("0004_1\n2", "a line break ('\\n')"),
                                       ("0004_1\r", "a line break ('\\r')")])
def test_tab_or_newline_in_a_tracklet_name_stops_the_scan_naming_it(tiny_root_copy, name, why):
    pid_dir = os.path.join(tiny_root_copy, "train", "0004")
    shutil.copytree(os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0]), os.path.join(pid_dir, name))
    for junk_rule in ("tracklet", "camera"):
        with pytest.raises(DatasetLayoutError) as err:
            DetReIDX(tiny_root_copy, junk_rule=junk_rule)
        message = str(err.value)
        assert message.startswith("1 tracklet folder name(s) cannot go into the submission CSV")
        assert f"{os.path.join(pid_dir, name)!r} contains {why}" in message
