"""processor.search: rank a plain folder of tracklets, CSV + pictures, feature cache, clear errors."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from processor import search
from tests.inference_fixtures import ROOT_DIR, make_nan_checkpoint, make_tiny_checkpoint, split_tracklets_in_halves


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Checkpoint plus query/gallery folders with plain names: query person<i> is the first half of a
    tracklet's frames, gallery group<i%2>/clip<i>.d its second half (the true match)."""
    folder = tmp_path_factory.mktemp("search")
    root, ckpt = make_tiny_checkpoint(folder)
    query, gallery, names = split_tracklets_in_halves(root, str(folder / "plain"))
    return ckpt, query, gallery, names


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_search_ranks_true_match_first_and_writes_csv_and_pictures(plain, tmp_path):
    ckpt, query, gallery, names = plain
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


def test_cache_makes_second_search_encode_nothing(plain, tmp_path, encoder_calls):
    ckpt, query, gallery, names = plain
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


def test_glob_and_nested_folders(plain, tmp_path):
    _, query, gallery, names = plain
    found = search.find_tracklets(gallery, "--gallery")
    assert len(found) == len(names) and all(t.name.startswith("group") for t in found)
    globbed = search.find_tracklets(os.path.join(gallery, "group1", "clip*"), "--gallery")
    # Names are relative to the glob's fixed part (.../group1).
    assert [t.name for t in globbed] == [f"clip{i}.d" for i in range(1, len(names), 2)]
    single = search.find_tracklets(os.path.join(query, "person0"), "--query")
    assert [t.name for t in single] == ["person0"]


def test_bad_inputs_exit_with_clear_messages(plain, tmp_path):
    ckpt, query, gallery, _ = plain
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


def test_cli_errors_are_lowercase_error_lines_like_every_command(plain, tmp_path, capsys):
    """A query folder without frames: one `error: ...` line (never `Error:`), no traceback; a bad --topk is a
    usage error, also `error: ...` (before: a bare message without the prefix)."""
    ckpt, _, gallery, _ = plain
    (tmp_path / "queries" / "person").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "processor.search", "--model_path", ckpt, "--query", str(tmp_path / "queries"),
         "--gallery", gallery, "--out", str(tmp_path / "r.csv"), "--device", "cpu"],
        cwd=ROOT_DIR, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Error:" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Folder ") and "person" in last and "holds no frames" in last, proc.stderr
    with pytest.raises(SystemExit) as stop:
        search.main(["--model_path", ckpt, "--query", gallery, "--gallery", gallery, "--topk", "0"])
    assert stop.value.code == 2
    assert "error: --topk must be >= 1, got 0" in capsys.readouterr().err


def test_cli_non_image_frame_has_no_traceback(plain, tmp_path):
    """Through a loader worker process too: one line naming the file, no traceback."""
    ckpt, query, gallery, _ = plain
    bad = tmp_path / "bad_gallery" / "someone"
    bad.mkdir(parents=True)
    (bad / "frame0.jpg").write_text("this is text, not a JPEG")
    proc = subprocess.run(
        [sys.executable, "-m", "processor.search", "--model_path", ckpt, "--query", query, "--gallery",
         str(tmp_path / "bad_gallery"), "--out", str(tmp_path / "r.csv"), "--num_workers", "1", "--device", "cpu"],
        cwd=ROOT_DIR, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "frame0.jpg cannot be decoded as an image" in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "r.csv")


def test_cli_unwritable_results_file_is_one_line(plain, tmp_path):
    """A WriteFailure through the command line: one line naming the file, no traceback, nothing cached."""
    ckpt, query, gallery, _ = plain
    cache = tmp_path / "c.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "processor.search", "--model_path", ckpt, "--query", query, "--gallery", gallery,
         "--out", "/sys/x.csv", "--cache", str(cache), "--device", "cpu", "--num_workers", "0"],
        cwd=ROOT_DIR, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write '/sys/x.csv'"), proc.stderr


def test_unwritable_cache_is_a_warning_and_results_are_written(plain, tmp_path, caplog):
    ckpt, query, gallery, names = plain
    out = tmp_path / "results.csv"
    with caplog.at_level("WARNING", logger="search"):
        result = search.main(["--model_path", ckpt, "--query", query, "--gallery", gallery, "--out", str(out),
                              "--cache", "/sys/c.npz", "--device", "cpu", "--num_workers", "0"])
    assert len(read_rows(out)) == len(names) * result.ranking.shape[1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("Feature cache not saved" in m and "/sys/c.npz" in m for m in warnings), warnings


def test_nan_checkpoint_is_an_error_naming_it_and_nothing_is_written(plain, tmp_path, capsys):
    from utils.cli import run_main
    from utils.metrics import NonFiniteFeaturesError

    ckpt, query, gallery, _ = plain
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


def test_non_finite_cached_rows_are_re_encoded(plain, tmp_path, encoder_calls):
    ckpt, query, gallery, names = plain
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
