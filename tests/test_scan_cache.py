"""The DetReIDX scan cache cannot lie (issue 20.3/20.4): its key holds what tools cannot restore (the inode
change time) and the name-reading option, its records must be the folders walked at start (no path outside
the root), and a frame missing at read time names the cache and how to clear it."""
import importlib.util
import json
import os
import shutil
import time

import numpy as np
import pytest

from datasets import detreidx
from datasets.detreidx import DatasetLayoutError, DetReIDX, natural_sort_key
from datasets.video import CorruptFrameError, read_frame
from tests.datasets_fixtures import make_tiny_root

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("scan_cache"))


@pytest.fixture
def root(pristine, tmp_path):
    copy = str(tmp_path / "xfd")
    shutil.copytree(pristine, copy)
    _age(copy)
    return copy


def _age(root, seconds=60.0):
    """Make every folder look ``seconds`` old (the cache is only written for settled trees)."""
    stamp = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (stamp, stamp))


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


def _restore_mtime_after(path, change):
    """Run ``change()`` and set ``path``'s mtime back, as rsync -t, touch -r or tar do; waits out the
    coarse clock so that the inode change time really moves."""
    before = os.stat(path)
    while True:
        change()
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        if after.st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.01)                    # same clock tick: change again (changes below are idempotent)


# ----------------------------------------------------------------------------- key
def test_a_renamed_frame_with_the_folder_mtime_restored_is_rescanned(root, tmp_path):
    cache = str(tmp_path / "cache")
    first = DetReIDX(root, scan_cache_dir=cache)
    assert not first.scan_summary.from_cache and _cache_file(cache)
    tracklet = first.train[0]
    folder = tracklet.folder
    last = sorted(os.listdir(folder), key=natural_sort_key)[-1]
    number = last.rsplit("_", 1)[1].split(".")[0]
    renamed = last.replace(number, f"{int(number) + 50:05d}")

    def rename():
        if os.path.exists(os.path.join(folder, last)):
            os.rename(os.path.join(folder, last), os.path.join(folder, renamed))

    _restore_mtime_after(folder, rename)
    second = DetReIDX(root, scan_cache_dir=cache)
    assert not second.scan_summary.from_cache
    frames = [os.path.basename(p) for p in next(t for t in second.train if t.folder == folder).frames]
    assert renamed in frames and last not in frames
    third = DetReIDX(root, scan_cache_dir=cache)        # the rewritten cache is used again
    assert third.scan_summary.from_cache


def test_the_key_changes_with_the_unknown_names_as_ground_option(root, tmp_path):
    cache = str(tmp_path / "cache")
    folder = os.path.join(root, "train", "0001", sorted(os.listdir(os.path.join(root, "train", "0001")))[0])
    for i, frame in enumerate(sorted(os.listdir(folder), key=natural_sort_key)):
        os.rename(os.path.join(folder, frame), os.path.join(folder, f"frame_{i:04d}.jpg"))
    _age(root)
    lenient = DetReIDX(root, unknown_names_as_ground=True, scan_cache_dir=cache)
    assert next(t for t in lenient.train if t.folder == folder).view == "ground"
    with pytest.raises(DatasetLayoutError, match="fits no DetReIDX scheme.*UNKNOWN_NAMES_AS_GROUND"):
        DetReIDX(root, unknown_names_as_ground=False, scan_cache_dir=cache)
    assert DetReIDX(root, unknown_names_as_ground=True, scan_cache_dir=cache).scan_summary.from_cache


def test_the_key_changes_with_a_tracklet_folder_moved_to_another_pid(root, tmp_path):
    cache = str(tmp_path / "cache")
    DetReIDX(root, scan_cache_dir=cache, junk_rule="camera")
    source = os.path.join(root, "train", "0001", sorted(os.listdir(os.path.join(root, "train", "0001")))[0])
    target = os.path.join(root, "train", "0002", os.path.basename(source))
    shutil.move(source, target)
    _age(root)
    moved = DetReIDX(root, scan_cache_dir=cache, junk_rule="camera")
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
def test_hand_edited_records_are_refused_with_a_warning_naming_the_cache(root, tmp_path, caplog, edit, said):
    cache = str(tmp_path / "cache")
    first = DetReIDX(root, scan_cache_dir=cache)
    path = _cache_file(cache)
    _edit_cache(path, edit)
    with caplog.at_level("WARNING", logger="datasets.detreidx"):
        again = DetReIDX(root, scan_cache_dir=cache)
    assert not again.scan_summary.from_cache
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Refusing the scan cache")]
    assert len(refused) == 1 and path in refused[0] and said in refused[0], refused
    folders = {t.folder for t in again._unique_tracklets()}
    assert folders == {t.folder for t in first._unique_tracklets()}
    assert all(os.path.commonpath([root, f]) == root for f in folders)
    assert all(os.path.isfile(p) for t in again.train for p in t.frames)
    assert DetReIDX(root, scan_cache_dir=cache).scan_summary.from_cache     # rewritten by the rescan


def test_an_unedited_cache_gives_the_scanned_records(root, tmp_path):
    cache = str(tmp_path / "cache")
    first = DetReIDX(root, scan_cache_dir=cache)
    second = DetReIDX(root, scan_cache_dir=cache)
    assert second.scan_summary.from_cache

    def signature(ds):
        return [(t.pid, t.name, t.camid, t.view, t.session, t.capture_point, list(t.frames)) for t in ds._unique_tracklets()]

    assert signature(second) == signature(first)


# ----------------------------------------------------------------------------- missing frames
def test_a_frame_missing_at_read_time_names_the_scan_cache_and_how_to_clear_it(root, tmp_path):
    cache = str(tmp_path / "cache")
    DetReIDX(root, scan_cache_dir=cache)
    ds = DetReIDX(root, scan_cache_dir=cache)
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
    assert missing in message and "DATASETS.SCAN_CACHE_DIR" in message and detreidx.default_scan_cache_dir() in message


# ----------------------------------------------------------------------------- benchmark
def test_bench_scan_runs_small_and_leaves_the_listing_function_alone(capsys):
    spec = importlib.util.spec_from_file_location("bench_scan", os.path.join(ROOT_DIR, "bench", "scan.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    real = detreidx._list_frame_names
    assert bench.main(["--tracklets", "12", "--frames", "30", "--pids", "4"]) == 0
    assert detreidx._list_frame_names is real
    out = capsys.readouterr().out
    assert "index of 12 tracklets x 30 frame names = 360 frames" in out and "cached start" in out


def test_switching_the_name_reading_option_is_a_new_key_not_a_refused_cache(root, tmp_path, caplog):
    """The option is part of the key: the lenient scan's cache is simply not the strict scan's (no warning
    that the cache was refused as if edited by hand)."""
    cache = str(tmp_path / "cache")
    folder = os.path.join(root, "train", "0001", sorted(os.listdir(os.path.join(root, "train", "0001")))[0])
    for i, frame in enumerate(sorted(os.listdir(folder), key=natural_sort_key)):
        os.rename(os.path.join(folder, frame), os.path.join(folder, f"frame_{i:04d}.jpg"))
    _age(root)
    DetReIDX(root, unknown_names_as_ground=True, scan_cache_dir=cache)
    caplog.clear()
    with caplog.at_level("WARNING", logger="datasets.detreidx"), pytest.raises(DatasetLayoutError):
        DetReIDX(root, unknown_names_as_ground=False, scan_cache_dir=cache)
    assert not [r for r in caplog.records if "scan cache" in r.getMessage()], caplog.text
