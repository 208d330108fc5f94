"""The DetReIDX scan cache (datasets/detreidx/scan_cache.py) skips the frame listing and cannot lie (issues 13.3,
20.3/20.4): it notices changed folders, is written only for settled trees, ignores a damaged file; its key holds
what tools cannot restore (the inode change time) and the name-reading option, its records must be the folders
walked at start (no path outside the root), and a frame missing at read time names the cache and how to clear it."""
import json
import os
import shutil

import numpy as np
import pytest

from datasets.detreidx import scan as scanner
from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.scan import DatasetLayoutError
from datasets.detreidx.scan_cache import default_scan_cache_dir
from datasets.video import CorruptFrameError, read_frame
from tests.helpers.data import find_tracklet_folder
from tests.helpers.files import age_tree, restore_mtime_after
from utils.protocol import natural_sort_key


@pytest.fixture
def aged_root(tiny_root_copy):
    """A private copy of the tiny data whose folders look a minute old (the cache is only written for
    settled trees)."""
    age_tree(tiny_root_copy)
    return tiny_root_copy


def _cache_file(cache_dir):
    files = os.listdir(cache_dir)
    assert len(files) == 1, files
    return os.path.join(cache_dir, files[0])


def _edit_cache(path, edit):
    """Rewrite the cache's JSON records with ``edit(meta)``, keeping its (still valid) key."""
    with np.load(path) as data:
        meta = json.loads(data["meta"].tobytes().decode())
        numbers = data["numbers"]
    edit(meta)
    with open(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), numbers=numbers)


# ----------------------------------------------------------------------------- key
def test_a_renamed_frame_with_the_folder_mtime_restored_is_rescanned(aged_root, tmp_path):
    cache = str(tmp_path / "cache")
    first = DetReIDX(aged_root, scan_cache_dir=cache)
    assert not first.scan_summary.from_cache and _cache_file(cache)
    tracklet = first.train[0]
    folder = tracklet.folder
    last = sorted(os.listdir(folder), key=natural_sort_key)[-1]
    number = last.rsplit("_", 1)[1].split(".")[0]
    renamed = last.replace(number, f"{int(number) + 50:05d}")

    def rename():
        if os.path.exists(os.path.join(folder, last)):
            os.rename(os.path.join(folder, last), os.path.join(folder, renamed))

    restore_mtime_after(folder, rename)
    second = DetReIDX(aged_root, scan_cache_dir=cache)
    assert not second.scan_summary.from_cache
    frames = [os.path.basename(p) for p in next(t for t in second.train if t.folder == folder).frames]
    assert renamed in frames and last not in frames
    third = DetReIDX(aged_root, scan_cache_dir=cache)        # the rewritten cache is used again
    assert third.scan_summary.from_cache


def test_the_key_changes_with_the_unknown_names_as_ground_option(aged_root, tmp_path):
    cache = str(tmp_path / "cache")
    folder = os.path.join(aged_root, "train", "0001", sorted(os.listdir(os.path.join(aged_root, "train", "0001")))[0])
    for i, frame in enumerate(sorted(os.listdir(folder), key=natural_sort_key)):
        os.rename(os.path.join(folder, frame), os.path.join(folder, f"frame_{i:04d}.jpg"))
    age_tree(aged_root)
    lenient = DetReIDX(aged_root, unknown_names_as_ground=True, scan_cache_dir=cache)
    assert next(t for t in lenient.train if t.folder == folder).view == "ground"
    with pytest.raises(DatasetLayoutError, match="fits no DetReIDX scheme.*UNKNOWN_NAMES_AS_GROUND"):
        DetReIDX(aged_root, unknown_names_as_ground=False, scan_cache_dir=cache)
    assert DetReIDX(aged_root, unknown_names_as_ground=True, scan_cache_dir=cache).scan_summary.from_cache


def test_the_key_changes_with_a_tracklet_folder_moved_to_another_pid(aged_root, tmp_path):
    cache = str(tmp_path / "cache")
    DetReIDX(aged_root, scan_cache_dir=cache, junk_rule="camera")
    source = os.path.join(aged_root, "train", "0001", sorted(os.listdir(os.path.join(aged_root, "train", "0001")))[0])
    target = os.path.join(aged_root, "train", "0002", os.path.basename(source))
    shutil.move(source, target)
    age_tree(aged_root)
    moved = DetReIDX(aged_root, scan_cache_dir=cache, junk_rule="camera")
    assert not moved.scan_summary.from_cache
    assert next(t for t in moved.train if t.folder == target).pid == 2


# ----------------------------------------------------------------------------- records
@pytest.mark.parametrize("edit, said", [
    (lambda meta: meta["tracklets"][0].__setitem__(0, "../../../etc"), "outside the root"),
    (lambda meta: meta["tracklets"][0].__setitem__(0, "/etc"), "outside the root"),
    (lambda meta: meta["tracklets"][0].__setitem__(0, meta["tracklets"][1][0]), "which the walk did not find"),
    (lambda meta: meta["tracklets"].pop(), "the walk found"),
    (lambda meta: meta["tracklets"][0].__setitem__(5, ["joined", "../../../../etc/passwd"]), "not a plain"),
    (lambda meta: meta["tracklets"][0].__setitem__(5, ["range", "../x_", ".jpg", 0, 1, 3, 1]), "not a plain"),
    (lambda meta: meta["tracklets"][0].__setitem__(4, "sideways"), "view"),
    (lambda meta: meta["tracklets"][0][6].__setitem__(4, 1e197), "whose first frame name says"),
    (lambda meta: meta["tracklets"][0][6].__setitem__(3, "S7"), "whose first frame name says"),
    (lambda meta: meta["tracklets"][0].__setitem__(5, ["joined", "frame_0001.jpg"]), "cannot be read"),
    (lambda meta: meta["tracklets"][0].__setitem__(5, ["range", "x_", ".jpg", 0, 0, 0, 1]), "no frames"),
])
def test_hand_edited_records_are_refused_with_a_warning_naming_the_cache(aged_root, tmp_path, caplog, edit, said):
    cache = str(tmp_path / "cache")
    first = DetReIDX(aged_root, scan_cache_dir=cache)
    path = _cache_file(cache)
    _edit_cache(path, edit)
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        again = DetReIDX(aged_root, scan_cache_dir=cache)
    assert not again.scan_summary.from_cache
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Refusing the scan cache")]
    assert len(refused) == 1 and path in refused[0] and said in refused[0], refused
    folders = {t.folder for t in again._unique_tracklets()}
    assert folders == {t.folder for t in first._unique_tracklets()}
    assert all(os.path.commonpath([aged_root, f]) == aged_root for f in folders)
    assert all(os.path.isfile(p) for t in again.train for p in t.frames)
    assert DetReIDX(aged_root, scan_cache_dir=cache).scan_summary.from_cache     # rewritten by the rescan


def test_an_unedited_cache_gives_the_scanned_records(aged_root, tmp_path):
    cache = str(tmp_path / "cache")
    first = DetReIDX(aged_root, scan_cache_dir=cache)
    second = DetReIDX(aged_root, scan_cache_dir=cache)
    assert second.scan_summary.from_cache

    def signature(ds):
        return [(t.pid, t.name, t.camid, t.view, t.session, t.capture_point, list(t.frames)) for t in ds._unique_tracklets()]

    assert signature(second) == signature(first)


# ----------------------------------------------------------------------------- missing frames
def test_a_frame_missing_at_read_time_names_the_scan_cache_and_how_to_clear_it(aged_root, tmp_path):
    cache = str(tmp_path / "cache")
    DetReIDX(aged_root, scan_cache_dir=cache)
    ds = DetReIDX(aged_root, scan_cache_dir=cache)
    assert ds.scan_summary.from_cache
    frame = ds.train[0].frames[0]
    os.remove(frame)
    with pytest.raises(CorruptFrameError) as err:
        read_frame(frame)
    message = str(err.value)
    assert "\n" not in message and frame in message
    assert f"delete the scan cache file {_cache_file(cache)}" in message
    assert "DATASETS.SCAN_CACHE_DIR ''" in message


def test_a_missing_frame_outside_any_cached_root_names_the_cache_setting(tmp_path):
    missing = str(tmp_path / "elsewhere" / "frame_0001.jpg")
    with pytest.raises(CorruptFrameError) as err:
        read_frame(missing)
    message = str(err.value)
    assert missing in message and "DATASETS.SCAN_CACHE_DIR" in message and default_scan_cache_dir() in message


# ----------------------------------------------------------------------------- skipping the listing
def _signature(ds):
    return [(t.pid, t.name, t.camid, t.view, t.session, t.capture_point, list(t.frames), t.label)
            for t in ds._unique_tracklets()]


def test_scan_cache_skips_the_frame_listing_and_notices_changes(tiny_root_copy, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    age_tree(tiny_root_copy)
    first = DetReIDX(tiny_root_copy, scan_cache_dir=cache)
    assert not first.scan_summary.from_cache and len(os.listdir(cache)) == 1

    listed = []
    real = scanner._list_frame_names
    monkeypatch.setattr(scanner, "_list_frame_names", lambda folder: listed.append(folder) or real(folder))
    second = DetReIDX(tiny_root_copy, scan_cache_dir=cache)
    assert second.scan_summary.from_cache and not listed
    assert _signature(second) == _signature(first)
    assert second.statistics_table().split("what the scanner")[0] == first.statistics_table().split("what the scanner")[0]

    # A frame added to one tracklet changes its folder's mtime: that start scans again.
    folder = second.train[0].folder
    frame = sorted(os.listdir(folder), key=natural_sort_key)[-1]
    number = frame.rsplit("_", 1)[1].split(".")[0]
    shutil.copy(os.path.join(folder, frame), os.path.join(folder, frame.replace(number, f"{int(number) + 1:05d}")))
    third = DetReIDX(tiny_root_copy, scan_cache_dir=cache)
    assert not third.scan_summary.from_cache and listed
    assert next(t for t in third.train if t.folder == folder).num_frames == second.train[0].num_frames + 1


def test_scan_cache_is_not_written_for_a_tree_that_just_changed_or_when_off(tiny_root_copy, tmp_path):
    cache = str(tmp_path / "cache")
    os.utime(find_tracklet_folder(tiny_root_copy))            # a folder changed a moment ago: racy, not cached
    DetReIDX(tiny_root_copy, scan_cache_dir=cache)
    assert not os.path.exists(cache)
    age_tree(tiny_root_copy)
    DetReIDX(tiny_root_copy, scan_cache_dir="")
    assert not os.path.exists(cache)


def test_damaged_scan_cache_is_ignored(tiny_root_copy, tmp_path):
    cache = str(tmp_path / "cache")
    age_tree(tiny_root_copy)
    DetReIDX(tiny_root_copy, scan_cache_dir=cache)
    path = os.path.join(cache, os.listdir(cache)[0])
    with open(path, "r+b") as f:
        f.truncate(100)
    again = DetReIDX(tiny_root_copy, scan_cache_dir=cache)
    assert not again.scan_summary.from_cache and again.train


def test_switching_the_name_reading_option_is_a_new_key_not_a_refused_cache(aged_root, tmp_path, caplog):
    """The option is part of the key: the lenient scan's cache is simply not the strict scan's (no warning
    that the cache was refused as if edited by hand)."""
    root = aged_root
    cache = str(tmp_path / "cache")
    folder = os.path.join(root, "train", "0001", sorted(os.listdir(os.path.join(root, "train", "0001")))[0])
    for i, frame in enumerate(sorted(os.listdir(folder), key=natural_sort_key)):
        os.rename(os.path.join(folder, frame), os.path.join(folder, f"frame_{i:04d}.jpg"))
    age_tree(root)
    DetReIDX(root, unknown_names_as_ground=True, scan_cache_dir=cache)
    caplog.clear()
    with caplog.at_level("WARNING", logger="datasets.detreidx"), pytest.raises(DatasetLayoutError):
        DetReIDX(root, unknown_names_as_ground=False, scan_cache_dir=cache)
    assert not [r for r in caplog.records if "scan cache" in r.getMessage()], caplog.text
