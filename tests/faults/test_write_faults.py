"""Write failures (full disk, read-only filesystem, no permission) in every writer: checkpoints,
config/JSON, submission CSV, rank-list PNGs, plots, text log, metrics log.

Row: the run stops with one line naming the file and the cause (``utils.fileio.WriteFailure``), no
traceback; the file's previous version is intact and no temporary file is left. Injected with
monkeypatch into the write, the fsync and the temp-file creation; then for real on a small tmpfs
where the test may mount one. Also: stale temporary files of every kind are removed at the start of
a run, outputs get a plain file's mode, and non-finite features stop an evaluation before any metric.
"""
import errno
import logging
import os
import stat
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import utils.fileio as fileio
from tests.helpers.cli import assert_clean_failure, run_cli
from tests.helpers.paths import DEMO_CONFIG
from tests.helpers.training import make_tiny_opts
from utils.checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint
from utils.fileio import WriteFailure, remove_stale_temp_files, write_text_atomic
from utils.submission import write_submission

CAUSES = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
          errno.EACCES: "Permission denied"}


def _rows(tag):
    return [(1, "1_1", [f"2_{tag}", "1_2"])]


def _report():
    from utils.report import condition_report
    tracklet = SimpleNamespace(view="aerial", height=10.0, distance=10.0, angle=30.0, aerial_distance=14.0,
                               session=1, pid=1, name="1_1")
    return condition_report([0.5], [True], [tracklet], [tracklet])


def _write(kind, folder, version):
    """Write file ``kind`` in ``folder`` (version 0 = the earlier good file); returns its path."""
    from utils.report import plot_condition_report
    from utils.visualize import _write_png_atomic

    if kind == "checkpoint":
        path = os.path.join(folder, "checkpoint_last.pth")
        save_checkpoint({"epoch": version, "w": torch.full((50_000,), float(version))}, path)
    elif kind == "json":
        path = os.path.join(folder, "results.json")
        write_text_atomic(path, f'{{"version": {version}}}')
    elif kind == "csv":
        path = os.path.join(folder, "submission.csv")
        write_submission(path, _rows(version))
    elif kind == "png":
        path = os.path.join(folder, "ranklist.png")
        _write_png_atomic(path, np.full((8, 8, 3), version * 40, dtype=np.uint8))
    else:
        path = os.path.join(folder, "per_condition.png")
        plot_condition_report(_report(), folder, "per_condition.png", title=f"v{version}")
    return path


def _snapshot(path):
    with open(path, "rb") as f:
        return f.read()


WRITERS = ["checkpoint", "json", "csv", "png", "plot"]


def _inject(monkeypatch, where, code):
    def fail(*args, **kwargs):
        raise OSError(code, CAUSES[code])

    if where == "write":       # the data write itself (torch.save turns it into a RuntimeError on its own)
        class FullDisk:
            def __init__(self, file):
                self._file = file

            def write(self, data):
                return fail() if len(data) > 8 else self._file.write(data)

            def __getattr__(self, name):
                return getattr(self._file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._file.close()

        def full_disk_open(path, mode="r", *args, **kwargs):
            file = open(path, mode, *args, **kwargs)
            return FullDisk(file) if any(m in mode for m in "wa") else file

        monkeypatch.setattr(fileio, "open", full_disk_open, raising=False)   # what fileio's writers open
    elif where == "fsync":     # the error a full disk reports late (delayed allocation), for every writer
        monkeypatch.setattr(fileio.os, "fsync", fail)
    else:                      # the temporary file cannot even be created (read-only, no permission)
        monkeypatch.setattr(fileio.tempfile, "mkstemp", fail)


@pytest.mark.slow
@pytest.mark.parametrize("kind", WRITERS)
@pytest.mark.parametrize("where,code", [("write", errno.ENOSPC), ("fsync", errno.ENOSPC), ("create", errno.EROFS),
                                        ("create", errno.EACCES)])
def test_injected_write_failure_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, kind, where, code):
    if where == "write" and kind in ("csv", "plot"):
        pytest.skip("the csv module and matplotlib write through their own file objects; fsync covers them")
    folder = str(tmp_path)
    path = _write(kind, folder, 0)
    before = _snapshot(path)
    _inject(monkeypatch, where, code)
    with pytest.raises(WriteFailure) as caught:
        _write(kind, folder, 1)
    message = str(caught.value)
    assert "\n" not in message and repr(path) in message
    assert CAUSES[code] in message and errno.errorcode[code] in message
    assert caught.value.errno == code and caught.value.path == path
    monkeypatch.undo()
    assert _snapshot(path) == before                                  # the previous file, untouched
    assert [n for n in os.listdir(folder) if n.endswith(".tmp")] == []  # temporary file removed
    if kind == "checkpoint":
        assert load_checkpoint(path)["epoch"] == 0


def test_torch_full_disk_error_names_the_cause_not_inline_container(tmp_path, monkeypatch):
    """torch.save reports a failed write as 'RuntimeError: [enforce fail at inline_container.cc...]'."""
    path = str(tmp_path / "checkpoint_last.pth")
    _inject(monkeypatch, "write", errno.ENOSPC)
    with pytest.raises(WriteFailure) as caught:
        save_checkpoint({"w": torch.zeros(100_000)}, path)
    assert "inline_container" not in str(caught.value) and "No space left on device" in str(caught.value)
    assert not os.path.exists(path)


def test_text_log_write_failure_stops_with_one_line(tmp_path, monkeypatch):
    from utils.logger import FailingFileHandler, setup_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(str(tmp_path), 0)
        handler = next(h for h in root.handlers if isinstance(h, FailingFileHandler))
        monkeypatch.setattr(handler.stream, "write", lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, CAUSES[errno.ENOSPC])))
        with pytest.raises(WriteFailure) as caught:
            logging.getLogger("train").info("epoch 1 done")
        assert repr(os.path.join(str(tmp_path), "log.txt")) in str(caught.value)
        assert "No space left on device" in str(caught.value)
        logging.getLogger("train").info("logged while the run unwinds")  # silent now, no second error
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_metrics_log_write_failure_names_the_file(tmp_path, monkeypatch):
    from utils.logger import MetricsWriter

    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    monkeypatch.setattr(writer._jsonl, "write", lambda text: (_ for _ in ()).throw(OSError(errno.EROFS, CAUSES[errno.EROFS])))
    with pytest.raises(WriteFailure, match=r"metrics\.jsonl.*Read-only file system"):
        writer.write("train", 1, 1, {"loss": 1.0})


def test_output_folder_that_cannot_be_created_is_a_write_failure(tmp_path):
    from utils.logger import setup_logging

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(WriteFailure, match="a_file"):
        setup_logging(str(blocker / "out"), 0)


@pytest.mark.slow
def test_train_and_evaluate_print_a_write_failure_as_one_line(tmp_path):
    """The entry points: one line on stderr, exit status 1, no traceback."""
    from configs import load_config

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = str(blocker / "out")
    data_root = str(tmp_path / "not_generated")
    proc = run_cli("train.py", "--config_file", DEMO_CONFIG, *make_tiny_opts(data_root, out, epochs=1))
    text = assert_clean_failure(proc, "error: cannot write", repr(out))
    assert len(proc.stderr.strip().splitlines()) == 1, text

    cfg = load_config(DEMO_CONFIG, make_tiny_opts(data_root, str(tmp_path / "train_out"), epochs=1))
    checkpoint = str(tmp_path / "checkpoint_last.pth")
    save_checkpoint({"config": cfg.dump(), "model": {}, "meta": {"num_classes": 4, "num_cameras": 3}}, checkpoint)
    proc = run_cli("evaluate_all_cases.py", "--model_path", checkpoint, "OUTPUT_DIR", out)
    # Evaluation writes into its own folder under OUTPUT_DIR (OUTPUT_DIR/eval/<checkpoint stem>).
    text = assert_clean_failure(proc, "error: cannot write", f"'{out}{os.sep}eval")
    assert len(proc.stderr.strip().splitlines()) == 1, text


# ----------------------------------------------------------------------------- a real small filesystem
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/small (needs root and mount); skipped with the reason otherwise."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def test_full_and_read_only_tmpfs(small_tmpfs):
    folder = str(small_tmpfs)
    small = os.path.join(folder, "checkpoint_last.pth")
    save_checkpoint({"epoch": 1, "w": torch.zeros(1000)}, small)
    csv_path = _write("csv", folder, 0)
    csv_before = _snapshot(csv_path)

    with pytest.raises(WriteFailure) as caught:                        # 4 MB into 256 KiB
        save_checkpoint({"epoch": 2, "w": torch.zeros(1_000_000)}, small)
    assert "No space left on device (ENOSPC)" in str(caught.value) and repr(small) in str(caught.value)
    assert load_checkpoint(small)["epoch"] == 1
    with pytest.raises(WriteFailure, match="ENOSPC"):
        write_submission(csv_path, [(1, "1_1", [f"2_{i}" for i in range(60_000)])])
    assert _snapshot(csv_path) == csv_before
    assert [n for n in os.listdir(folder) if n.endswith(".tmp")] == []

    done = subprocess.run(["mount", "-o", "remount,ro", folder], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {done.stderr.strip()}")
    with pytest.raises(WriteFailure, match=r"Read-only file system \(EROFS\)"):
        write_text_atomic(os.path.join(folder, "results.json"), "{}")
    with pytest.raises(WriteFailure, match="EROFS"):
        save_checkpoint({"epoch": 3}, small)
    assert load_checkpoint(small)["epoch"] == 1


# ----------------------------------------------------------------------------- stale temporary files
STALE = [".checkpoint_last.pth.ab12cd_9.tmp", ".plot-x1y2z3w4.png.tmp", ".ranklist-a1b2c3d4.png.tmp",
         ".submission-abcdefgh.csv.tmp", ".scores-12345678.json.tmp", ".results.json.qwertyui.tmp",
         os.path.join("ranklists_case1", ".ranklist_00001_1_1.png.zxcvbnm1.tmp")]
KEPT = ["checkpoint_last.pth", "notes.tmp", ".hidden", "log.txt", ".plot-short.png.tmp",
        os.path.join("ranklists_case1", "ranklist_00001_1_1.png"),
        os.path.join("a", "b", ".deep.json.abcdefgh.tmp")]


def _plant(folder):
    for name in STALE + KEPT:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("x")


def test_stale_temp_files_of_every_kind_are_removed(tmp_path):
    _plant(str(tmp_path))
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(os.path.relpath(p, tmp_path) for p in removed) == sorted(STALE)
    for name in KEPT:
        assert os.path.exists(tmp_path / name), name


def test_resume_auto_removes_stale_plot_temp_files(tmp_path):
    _plant(str(tmp_path))
    os.remove(tmp_path / "checkpoint_last.pth")
    assert find_resume_checkpoint(str(tmp_path)) is None
    assert not os.path.exists(tmp_path / ".plot-x1y2z3w4.png.tmp")


def test_run_case_evaluation_cleans_its_folder_first(tmp_path, monkeypatch):
    import processor.evaluation as evaluation

    _plant(str(tmp_path))
    monkeypatch.setattr(evaluation, "unique_tracklets", lambda cases: pytest.skip("cleanup checked") or None)
    try:
        evaluation.run_case_evaluation(None, None, {1: None}, torch.device("cpu"), str(tmp_path))
    except pytest.skip.Exception:
        pass
    assert not os.path.exists(tmp_path / ".plot-x1y2z3w4.png.tmp")


# ----------------------------------------------------------------------------- file modes
def test_outputs_get_the_mode_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        paths = [_write(kind, str(tmp_path), 0) for kind in WRITERS]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


# ----------------------------------------------------------------------------- non-finite features
def test_non_finite_features_stop_evaluation_before_any_metric(tmp_path, monkeypatch):
    import processor.evaluation as evaluation
    from utils.cli import is_explained_error
    from utils.metrics import NonFiniteFeaturesError

    tracklets = [SimpleNamespace(name="0001_1"), SimpleNamespace(name="0002_7")]
    features = torch.ones(2, 4)
    features[1, 2] = float("nan")
    monkeypatch.setattr(evaluation, "unique_tracklets", lambda cases: (tracklets, {}))
    monkeypatch.setattr(evaluation, "encode_tracklets", lambda *a, **k: {"embedding": features})
    monkeypatch.setattr(evaluation, "evaluate_cases", lambda *a, **k: pytest.fail("metrics were computed"))
    with pytest.raises(NonFiniteFeaturesError) as caught:
        evaluation.run_case_evaluation(None, None, {1: None}, torch.device("cpu"), str(tmp_path),
                                       extra={"checkpoint": "runs/x/checkpoint_epoch3.pth"})
    message = str(caught.value)
    assert "runs/x/checkpoint_epoch3.pth" in message and "non-finite" in message and "'0002_7'" in message
    assert "1 of 2" in message
    assert is_explained_error(caught.value)


# ----------------------------------------------------------------------------- atomic writes: interrupts, fsync, links
def test_a_keyboard_interrupt_inside_a_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old\n")

    def interrupted(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(str(path), interrupted)
    assert os.listdir(tmp_path) == ["results.json"] and path.read_text() == "old\n"


def test_the_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    write_text_atomic(str(tmp_path / "a.json"), "{}")
    kinds = [kind for kind, _ in events]
    assert "fsync" in kinds and kinds.index("fsync") < kinds.index("replace"), events
    temp = events[kinds.index("replace")][1]
    assert events[kinds.index("fsync")][1] == os.path.realpath(temp)      # the temporary file's data


def test_stale_temp_cleanup_does_not_follow_symbolic_links(tmp_path):
    other = tmp_path / "another_run"
    other.mkdir()
    theirs = other / ".results.json.abcdefgh.tmp"      # another run's write in progress
    theirs.write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(other, run / "linked")
    assert remove_stale_temp_files(str(run)) == []
    assert theirs.exists()
