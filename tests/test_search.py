"""``python -m processor.search`` (processor/search.py): rank a plain folder of tracklets (the search_folders
fixture: the true match of query person<i> is gallery clip<i>.d), CSV + pictures, clear errors; a feature cache
that cannot lie (issue 20.3/20.4): every reused row checked, keys that hold what tools cannot restore; hidden,
unreadable and looping folders (20.6); rank-list pictures without labels (issue 21.5)."""
import csv
import os
import shutil

import cv2
import numpy as np
import pytest

import processor.inference as inference
from processor import search
from tests.helpers.checkpoints import make_nan_checkpoint
from tests.helpers.cli import run_cli
from tests.helpers.files import restore_mtime_after
from utils import visualize


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_search_ranks_true_match_first_and_writes_csv_and_pictures(search_folders, tmp_path):
    ckpt, query, gallery, names = search_folders
    out = str(tmp_path / "results.csv")
    search.main(["--model_path", ckpt, "--query", query, "--gallery", gallery, "--topk", "3", "--out", out,
                 "--visualize", "2", "--device", "cpu"])
    rows = read_rows(out)
    assert list(rows[0]) == list(search.CSV_HEADER)
    assert len(rows) == 3 * len(names)
    firsts = {r["query"]: r["gallery_tracklet"] for r in rows if r["rank"] == "1"}
    assert sorted(firsts) == sorted(names)
    hits = sum(firsts[f"person{i}"] == f"group{i % 2}/clip{i}.d" for i in range(len(names)))
    assert hits >= 0.75 * len(names), f"true match first for only {hits} of {len(names)} queries"
    for q in names:  # distances ascend with rank
        dists = [float(r["distance"]) for r in rows if r["query"] == q]
        assert dists == sorted(dists)
    pictures = os.listdir(tmp_path / "ranklists")
    assert len(pictures) == 2 and all(p.endswith(".png") for p in pictures)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_cache_makes_second_search_encode_nothing(search_folders, tmp_path, encoder_calls):
    ckpt, query, gallery, names = search_folders
    cache = str(tmp_path / "features.npz")
    args = ["--model_path", ckpt, "--query", query, "--gallery", gallery, "--cache", cache, "--device", "cpu"]
    first = search.main(args + ["--out", str(tmp_path / "a.csv")])
    assert encoder_calls["clips"] == 2 * len(names)  # even sampling: one clip per tracklet
    encoder_calls["clips"] = 0
    second = search.main(args + ["--out", str(tmp_path / "b.csv")])
    assert encoder_calls["clips"] == 0
    np.testing.assert_array_equal(first.ranking, second.ranking)
    assert read_rows(tmp_path / "a.csv") == read_rows(tmp_path / "b.csv")

    # A touched frame invalidates exactly its tracklet; another checkpoint file invalidates all.
    frame = os.path.join(gallery, "group0", "clip0.d", "frame0.jpg")
    stat = os.stat(frame)
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    search.main(args + ["--out", str(tmp_path / "c.csv")])
    assert encoder_calls["clips"] == 1
    encoder_calls["clips"] = 0
    other = str(tmp_path / "other.pth")
    with open(ckpt, "rb") as src, open(other, "wb") as dst:
        dst.write(src.read())
    search.main(["--model_path", other] + args[2:] + ["--out", str(tmp_path / "d.csv")])
    assert encoder_calls["clips"] == 2 * len(names)


def test_glob_and_nested_folders(search_folders, tmp_path):
    _, query, gallery, names = search_folders
    found = search.find_tracklets(gallery, "--gallery")
    assert len(found) == len(names) and all(t.name.startswith("group") for t in found)
    globbed = search.find_tracklets(os.path.join(gallery, "group1", "clip*"), "--gallery")
    # Names are relative to the glob's fixed part (.../group1).
    assert [t.name for t in globbed] == [f"clip{i}.d" for i in range(1, len(names), 2)]
    single = search.find_tracklets(os.path.join(query, "person0"), "--query")
    assert [t.name for t in single] == ["person0"]


def test_bad_inputs_exit_with_clear_messages(search_folders, tmp_path):
    ckpt, query, gallery, _ = search_folders
    base = ["--model_path", ckpt, "--out", str(tmp_path / "r.csv"), "--device", "cpu"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="holds no tracklet folders"):
        search.main(base + ["--query", str(empty), "--gallery", gallery])
    (empty / "person").mkdir()
    with pytest.raises(SystemExit, match=r"person .*holds no frames"):
        search.main(base + ["--query", str(empty), "--gallery", gallery])
    with pytest.raises(SystemExit, match="matches no folder"):
        search.main(base + ["--query", str(tmp_path / "nothing*"), "--gallery", gallery])
    notes = tmp_path / "notes.pth"
    notes.write_text("hello")
    with pytest.raises(SystemExit, match="Cannot read checkpoint"):
        search.main(["--model_path", str(notes), "--query", query, "--gallery", gallery, "--out", str(tmp_path / "r.csv")])


@pytest.mark.slow
def test_cli_errors_are_lowercase_error_lines_like_every_command(search_folders, tmp_path, capsys):
    """A query folder without frames: one `error: ...` line (never `Error:`), no traceback; a bad --topk is a
    usage error, also `error: ...` (before: a bare message without the prefix)."""
    ckpt, _, gallery, _ = search_folders
    (tmp_path / "queries" / "person").mkdir(parents=True)
    proc = run_cli("-m", "processor.search", "--model_path", ckpt, "--query", str(tmp_path / "queries"), "--gallery",
                   gallery, "--out", str(tmp_path / "r.csv"), "--device", "cpu", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Error:" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Folder ") and "person" in last and "holds no frames" in last, proc.stderr
    with pytest.raises(SystemExit) as stop:
        search.main(["--model_path", ckpt, "--query", gallery, "--gallery", gallery, "--topk", "0"])
    assert stop.value.code == 2
    assert "error: --topk must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_non_image_frame_has_no_traceback(search_folders, tmp_path):
    """Through a loader worker process too: one line naming the file, no traceback."""
    ckpt, query, gallery, _ = search_folders
    bad = tmp_path / "bad_gallery" / "someone"
    bad.mkdir(parents=True)
    (bad / "frame0.jpg").write_text("this is text, not a JPEG")
    proc = run_cli("-m", "processor.search", "--model_path", ckpt, "--query", query, "--gallery",
                   str(tmp_path / "bad_gallery"), "--out", str(tmp_path / "r.csv"), "--num_workers", "1", "--device",
                   "cpu", timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "frame0.jpg cannot be decoded as an image" in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "r.csv")


@pytest.mark.slow
def test_cli_unwritable_results_file_is_one_line(search_folders, tmp_path):
    """A WriteFailure through the command line: one line naming the file, no traceback, nothing cached."""
    ckpt, query, gallery, _ = search_folders
    cache = tmp_path / "c.npz"
    proc = run_cli("-m", "processor.search", "--model_path", ckpt, "--query", query, "--gallery", gallery, "--out",
                   "/sys/x.csv", "--cache", str(cache), "--device", "cpu", "--num_workers", "0", timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write '/sys/x.csv'"), proc.stderr


def test_unwritable_cache_is_a_warning_and_results_are_written(search_folders, tmp_path, caplog):
    ckpt, query, gallery, names = search_folders
    out = tmp_path / "results.csv"
    with caplog.at_level("WARNING", logger="search"):
        result = search.main(["--model_path", ckpt, "--query", query, "--gallery", gallery, "--out", str(out),
                              "--cache", "/sys/c.npz", "--device", "cpu", "--num_workers", "0"])
    assert len(read_rows(out)) == len(names) * result.ranking.shape[1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("Feature cache not saved" in m and "/sys/c.npz" in m for m in warnings), warnings


def test_nan_checkpoint_is_an_error_naming_it_and_nothing_is_written(search_folders, tmp_path, capsys):
    from utils.cli import run_main
    from utils.metrics import NonFiniteFeaturesError

    ckpt, query, gallery, _ = search_folders
    nan_ckpt = make_nan_checkpoint(ckpt, str(tmp_path / "diverged.pth"))
    out, cache = tmp_path / "r.csv", tmp_path / "c.npz"
    args = ["--model_path", nan_ckpt, "--query", query, "--gallery", gallery, "--out", str(out),
            "--cache", str(cache), "--device", "cpu", "--num_workers", "0"]
    with pytest.raises(NonFiniteFeaturesError, match=r"diverged\.pth produces non-finite features .*'person0'"):
        search.main(args)
    assert not out.exists() and not cache.exists()
    # The command line prints it as one line (run_main, as `python -m processor.search` does).
    with pytest.raises(SystemExit) as exited:
        run_main(lambda: search.main(args))
    message = str(exited.value.code)
    assert message.startswith("error: ") and "diverged.pth produces non-finite features" in message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err


def test_non_finite_cached_rows_are_re_encoded(search_folders, tmp_path, encoder_calls):
    ckpt, query, gallery, names = search_folders
    cache = str(tmp_path / "features.npz")
    args = ["--model_path", ckpt, "--query", query, "--gallery", gallery, "--cache", cache, "--device", "cpu",
            "--num_workers", "0"]
    first = search.main(args + ["--out", str(tmp_path / "a.csv")])
    with np.load(cache) as data:
        stored = {k: data[k] for k in data.files}
    stored["features"][0] = np.nan  # as an older version could have cached
    np.savez(cache, **stored)
    encoder_calls["clips"] = 0
    second = search.main(args + ["--out", str(tmp_path / "b.csv")])
    assert encoder_calls["clips"] == 1
    np.testing.assert_array_equal(first.ranking, second.ranking)


# ----------------------------------------------------------------------------- the feature cache
@pytest.fixture
def copied(search_folders, tmp_path):
    """Own copies of the query and gallery folders (tests change frames)."""
    ckpt, query, gallery, names = search_folders
    shutil.copytree(query, tmp_path / "query")
    shutil.copytree(gallery, tmp_path / "gallery")
    return ckpt, str(tmp_path / "query"), str(tmp_path / "gallery"), names


def _run(ckpt, query, gallery, tmp_path, out="r.csv", *extra):
    return search.main(["--model_path", ckpt, "--query", query, "--gallery", gallery, "--cache",
                        str(tmp_path / "features.npz"), "--out", str(tmp_path / out), "--device", "cpu",
                        "--num_workers", "0", *extra])


def _rewrite_cache(path, change):
    """Rewrite the cache's arrays with ``change(arrays)`` (a dict), as a tool or a hand edit would."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _refusals(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "failed their check" in r.getMessage()]


# ----------------------------------------------------------------------------- every reused row is checked
def _wider(arrays):
    arrays["features"] = np.concatenate([arrays["features"], arrays["features"][:, :3]], axis=1)


def _narrower_and_one_missing(arrays):
    for key in ("features", "keys", "digests"):
        arrays[key] = arrays[key][1:]
    arrays["features"] = arrays["features"][:, :-5]


def _float64(arrays):
    arrays["features"] = arrays["features"].astype(np.float64)


def _random_unit_rows(arrays):
    rows = np.random.default_rng(0).normal(size=arrays["features"].shape).astype(np.float32)
    arrays["features"] = rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _one_infinite_element(arrays):
    arrays["features"][2, 5] = np.inf


def _scaled(arrays):
    arrays["features"] = arrays["features"] * 3


@pytest.mark.slow
@pytest.mark.parametrize("change, reason, all_rows", [
    (_wider, "width", True), (_narrower_and_one_missing, "width", True), (_float64, "dtype float64", True),
    (_random_unit_rows, "checksum mismatch", True), (_one_infinite_element, "non-finite", False),
    (_scaled, "not unit length", True),
])
def test_cached_rows_that_fail_their_check_are_re_encoded(search_folders, tmp_path, encoder_calls, caplog, change, reason, all_rows):
    ckpt, query, gallery, names = search_folders
    first = _run(ckpt, query, gallery, tmp_path, "a.csv")
    cache = str(tmp_path / "features.npz")
    _rewrite_cache(cache, change)
    encoder_calls["clips"] = 0
    with caplog.at_level("WARNING", logger="search"):
        second = _run(ckpt, query, gallery, tmp_path, "b.csv")
    expected = 2 * len(names) if all_rows else 1
    assert encoder_calls["clips"] == expected
    np.testing.assert_array_equal(second.ranking, first.ranking)
    np.testing.assert_allclose(second.distances, first.distances, atol=1e-6)
    warned = _refusals(caplog)
    assert warned and all(reason in w and cache in w for w in warned), warned
    encoder_calls["clips"] = 0
    _run(ckpt, query, gallery, tmp_path, "c.csv")            # the rewritten cache holds only good rows
    assert encoder_calls["clips"] == 0


def test_an_older_cache_without_checksums_is_re_encoded(search_folders, tmp_path, encoder_calls):
    ckpt, query, gallery, names = search_folders
    _run(ckpt, query, gallery, tmp_path)

    def old_format(arrays):
        del arrays["version"], arrays["digests"]

    _rewrite_cache(str(tmp_path / "features.npz"), old_format)
    encoder_calls["clips"] = 0
    _run(ckpt, query, gallery, tmp_path)
    assert encoder_calls["clips"] == 2 * len(names)


def test_feature_cache_checks_rows_itself(tmp_path):
    cache = search.FeatureCache(None, "model")
    row = np.zeros(4, np.float32)
    row[0] = 1
    cache.put("k", row)
    assert cache.get("k", 4) is row or np.array_equal(cache.get("k", 4), row)
    assert cache.get("k", 5) is None and cache.refused["width 4, not 5"] == 1
    cache.features["k"] = row.copy()
    cache.features["k"][1] = 1e-3                       # same width and length within tolerance, other values
    assert cache.get("k", 4) is None and cache.refused["checksum mismatch"] == 1


# ----------------------------------------------------------------------------- keys: what tools cannot restore
def test_a_frame_edited_with_size_and_mtime_restored_is_re_encoded(copied, tmp_path):
    ckpt, query, gallery, _ = copied
    _run(ckpt, query, gallery, tmp_path)
    frame = os.path.join(gallery, "group0", "clip0.d", "frame0.jpg")
    size = os.path.getsize(frame)

    def garble():
        with open(frame, "r+b") as f:
            f.write(b"\x00" * size)

    restore_mtime_after(frame, garble)
    assert os.path.getsize(frame) == size
    with pytest.raises(SystemExit, match="frame0.jpg cannot be decoded"):   # re-encoded, not "cached"
        _run(ckpt, query, gallery, tmp_path)


def test_a_frame_renamed_with_the_folder_mtime_restored_is_re_encoded(copied, tmp_path, encoder_calls):
    ckpt, query, gallery, names = copied
    _run(ckpt, query, gallery, tmp_path)
    folder = os.path.join(query, "person1")
    last = sorted(os.listdir(folder))[-1]

    def rename():
        if os.path.exists(os.path.join(folder, last)):
            os.rename(os.path.join(folder, last), os.path.join(folder, "zz_" + last))

    restore_mtime_after(folder, rename)
    encoder_calls["clips"] = 0
    _run(ckpt, query, gallery, tmp_path)
    assert encoder_calls["clips"] == 1


def test_the_cache_depends_on_the_camera_id(search_folders, tmp_path, encoder_calls):
    ckpt, query, gallery, names = search_folders
    first = _run(ckpt, query, gallery, tmp_path, "a.csv", "--query_camera", "0", "--gallery_camera", "0")
    encoder_calls["clips"] = 0
    _run(ckpt, query, gallery, tmp_path, "b.csv", "--query_camera", "1", "--gallery_camera", "0")
    assert encoder_calls["clips"] == len(names)                     # queries only
    encoder_calls["clips"] = 0
    again = _run(ckpt, query, gallery, tmp_path, "c.csv", "--query_camera", "0", "--gallery_camera", "0")
    assert encoder_calls["clips"] == 0
    np.testing.assert_array_equal(again.ranking, first.ranking)


@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_the_cache_notices_a_checkpoint_rewritten_with_size_and_mtime_restored(search_folders, tmp_path, encoder_calls, how):
    source, query, gallery, names = search_folders
    ckpt = str(tmp_path / "model.pth")
    shutil.copyfile(source, ckpt)
    _run(ckpt, query, gallery, tmp_path)
    with open(ckpt, "rb") as f:
        content = f.read()
    inode = os.stat(ckpt).st_ino

    def rewrite():
        if how == "in place":
            with open(ckpt, "r+b") as f:        # same bytes, same size: what a trainer's overwrite looks like
                f.write(content)
        else:
            fresh = ckpt + ".new"
            with open(fresh, "wb") as f:
                f.write(content)
            os.replace(fresh, ckpt)

    restore_mtime_after(ckpt, rewrite)
    assert (os.stat(ckpt).st_ino == inode) == (how == "in place")
    encoder_calls["clips"] = 0
    _run(ckpt, query, gallery, tmp_path)
    assert encoder_calls["clips"] == 2 * len(names)


# ----------------------------------------------------------------------------- folders
def test_hidden_frame_files_and_folders_are_skipped(copied):
    _, query, _, names = copied
    folder = os.path.join(query, "person0")
    frames = sorted(os.listdir(folder))
    with open(os.path.join(folder, "._" + frames[0]), "wb") as f:      # a macOS AppleDouble file
        f.write(b"\x00\x05\x16\x07" + b"\x00" * 60)
    os.makedirs(os.path.join(query, ".thumbnails", "x"))
    with open(os.path.join(query, ".thumbnails", "x", "a.jpg"), "wb") as f:
        f.write(b"not a frame")
    found = {t.name: t for t in search.find_tracklets(query, "--query")}
    assert sorted(found) == sorted(names)
    assert [os.path.basename(p) for p in found["person0"].frames] == sorted(frames, key=search.natural_sort_key)
    only_hidden = os.path.join(query, "ghost")
    os.makedirs(only_hidden)
    shutil.copyfile(os.path.join(folder, frames[0]), os.path.join(only_hidden, "._frame0.jpg"))
    with pytest.raises(inference.InferenceInputError, match="ghost .*holds no frames"):
        search.find_tracklets(query, "--query")


def test_a_symlinked_tracklet_folder_is_searched(copied, tmp_path):
    _, query, _, names = copied
    elsewhere = tmp_path / "elsewhere"
    shutil.move(os.path.join(query, "person0"), elsewhere)
    os.symlink(elsewhere, os.path.join(query, "person0"))
    assert sorted(t.name for t in search.find_tracklets(query, "--query")) == sorted(names)


@pytest.mark.parametrize("kind", ["ancestor", "self", "dangling"])
def test_a_looping_or_dangling_link_is_one_error_naming_it(copied, kind):
    _, query, _, _ = copied
    link = os.path.join(query, "person0", "again") if kind == "ancestor" else os.path.join(query, "loop")
    target = {"ancestor": query, "self": "loop", "dangling": "/nonexistent/elsewhere"}[kind]
    os.symlink(target, link)
    with pytest.raises(inference.InferenceInputError) as err:
        search.find_tracklets(query, "--query")
    message = str(err.value)
    assert link in message and "\n" not in message
    assert ("would loop" if kind == "ancestor" else "loops or points nowhere") in message


def test_an_unreadable_folder_is_one_error_naming_it(copied, monkeypatch):
    # Tests may run as root, whom chmod does not stop: the listing's answer is stood in.
    _, query, _, _ = copied
    blocked = os.path.join(query, "person1")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real(path)

    monkeypatch.setattr(search.os, "scandir", scandir)
    with pytest.raises(inference.InferenceInputError, match="person1 .*cannot be read \\(Permission denied\\)"):
        search.find_tracklets(query, "--query")


# ----------------------------------------------------------------------------- rank lists
def test_rank_lists_without_labels_are_neutral_and_show_distances(search_folders, tmp_path):
    ckpt, query, gallery, names = search_folders
    result = _run(ckpt, query, gallery, tmp_path, "r.csv", "--visualize", "2", "--topk", "3")
    pictures = sorted(os.listdir(tmp_path / "ranklists"))
    assert len(pictures) == 2
    image = cv2.imread(str(tmp_path / "ranklists" / pictures[0]))
    tile_width = 3 * visualize.FRAME_SIZE[0] + 2 * visualize.BORDER
    header = visualize.HEADER + visualize.HEADER_LINE                  # name line + distance line
    assert image.shape[0] == header + visualize.FRAME_SIZE[1] + 2 * visualize.BORDER
    for tile in range(1, 4):
        colour = image[header + 1, tile * (tile_width + visualize.GAP) + 1].astype(int)
        assert np.abs(colour - visualize.COLOURS["unlabelled"]).max() < 40, (tile, colour)
    entries = visualize.ranklist_entries("person0", [g.name for g in result.gallery], result.ranking[0],
                                         distances_row=result.distances[0], labelled=False)
    assert [kind for kind, _ in entries] == ["unlabelled"] * 3
    assert [lines[1] for _, lines in entries] == [f"d {d:.4f}" for d in result.distances[0]]


def test_a_cached_row_moved_to_another_tracklets_key_fails_its_checksum():
    """Each row's checksum covers its key: a row (with its own checksum) under another tracklet's key is refused."""
    cache = search.FeatureCache(None, "model")
    first, second = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    cache.put("a", first)
    cache.put("b", second)
    cache.features["a"], cache.digests["a"] = cache.features["b"], cache.digests["b"]
    assert cache.get("a", 4) is None and cache.refused["checksum mismatch"] == 1
    assert cache.get("b", 4) is not None


def test_a_hidden_frame_file_next_to_tracklet_folders_is_not_a_tracklet(copied):
    """A macOS ``._x.jpg`` left beside the tracklet folders does not turn their parent into a tracklet."""
    _, query, _, names = copied
    folder = os.path.join(query, "person0")
    shutil.copyfile(os.path.join(folder, sorted(os.listdir(folder))[0]), os.path.join(query, "._stray.jpg"))
    assert sorted(t.name for t in search.find_tracklets(query, "--query")) == sorted(names)
