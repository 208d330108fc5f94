"""processor.search: a feature cache that cannot lie (issue 20.3/20.4), hidden, unreadable and looping
folders (20.6), and rank-list pictures without labels (issue 21.5)."""
import os
import shutil
import time

import cv2
import numpy as np
import pytest

import processor.inference as inference
from processor import search
from tests.inference_fixtures import make_tiny_checkpoint, split_tracklets_in_halves
from utils import visualize


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search_cache")
    root, ckpt = make_tiny_checkpoint(folder)
    query, gallery, names = split_tracklets_in_halves(root, str(folder / "plain"))
    return ckpt, query, gallery, names


@pytest.fixture
def copied(plain, tmp_path):
    """Own copies of the query and gallery folders (tests change frames)."""
    ckpt, query, gallery, names = plain
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


def _restore_mtime_after(path, change):
    """Run ``change()`` and set ``path``'s mtime back (rsync -t, touch -r); repeat until the ctime moved
    (a coarse clock can leave it in the same tick). ``change`` must be idempotent."""
    before = os.stat(path)
    while True:
        change()
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if os.stat(path).st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.01)


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


@pytest.mark.parametrize("change, reason, all_rows", [
    (_wider, "width", True), (_narrower_and_one_missing, "width", True), (_float64, "dtype float64", True),
    (_random_unit_rows, "checksum mismatch", True), (_one_infinite_element, "non-finite", False),
    (_scaled, "not unit length", True),
])
def test_cached_rows_that_fail_their_check_are_re_encoded(plain, tmp_path, encoder_calls, caplog, change, reason, all_rows):
    ckpt, query, gallery, names = plain
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


def test_an_older_cache_without_checksums_is_re_encoded(plain, tmp_path, encoder_calls):
    ckpt, query, gallery, names = plain
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

    _restore_mtime_after(frame, garble)
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

    _restore_mtime_after(folder, rename)
    encoder_calls["clips"] = 0
    _run(ckpt, query, gallery, tmp_path)
    assert encoder_calls["clips"] == 1


def test_the_cache_depends_on_the_camera_id(plain, tmp_path, encoder_calls):
    ckpt, query, gallery, names = plain
    first = _run(ckpt, query, gallery, tmp_path, "a.csv", "--query_camera", "0", "--gallery_camera", "0")
    encoder_calls["clips"] = 0
    _run(ckpt, query, gallery, tmp_path, "b.csv", "--query_camera", "1", "--gallery_camera", "0")
    assert encoder_calls["clips"] == len(names)                     # queries only
    encoder_calls["clips"] = 0
    again = _run(ckpt, query, gallery, tmp_path, "c.csv", "--query_camera", "0", "--gallery_camera", "0")
    assert encoder_calls["clips"] == 0
    np.testing.assert_array_equal(again.ranking, first.ranking)


@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_the_cache_notices_a_checkpoint_rewritten_with_size_and_mtime_restored(plain, tmp_path, encoder_calls, how):
    source, query, gallery, names = plain
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

    _restore_mtime_after(ckpt, rewrite)
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
def test_rank_lists_without_labels_are_neutral_and_show_distances(plain, tmp_path):
    ckpt, query, gallery, names = plain
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


def test_rank_list_kinds_with_and_without_ground_truth():
    names = ["a", "b", "q"]
    entries = visualize.ranklist_entries("q", names, [2, 0, 1], q_pid=7, g_pids=[7, 8, 7], labelled=True)
    assert [k for k, _ in entries] == ["junk", "match", "other"] and entries[0][1] == ["1 q"]
    assert visualize.has_labels([1, 2], [2, 3]) and not visualize.has_labels([1, 2], [3, 4])
    assert not visualize.has_labels(None, [1])
    # An anonymised test set: pids never shared, so nothing is drawn red.
    entries = visualize.ranklist_entries("q", names, [0, 1], q_pid=None, g_pids=None, labelled=False)
    assert [k for k, _ in entries] == ["unlabelled", "unlabelled"]


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
