"""``python -m datasets.detreidx --root DIR`` (datasets/detreidx/__main__.py): the statistics table with cameras,
capture points and what the scanner understood of the names, its usage line, and a layout error as one line."""
import os

import pytest

from datasets.detreidx.__main__ import main as scan_cli
from datasets.detreidx.dataset import DetReIDX
from tests.helpers.cli import run_cli


def test_statistics_table_and_cli(tiny_root, capsys):
    ds = DetReIDX(tiny_root, val_ids=1)
    table = ds.statistics_table()
    assert "case3_aerial_to_aerial query" in table and "val case1_aerial_to_ground query" in table
    assert "cameras: 3" in table and "ground" in table
    assert scan_cli(["--root", tiny_root]) == 0
    out = capsys.readouterr().out
    train_line = next(line for line in out.splitlines() if line.startswith("train"))
    frames = sum(len(t.frames) for t in DetReIDX(tiny_root).train)
    assert train_line.split()[1:4] == ["6", "36", str(frames)]


def test_the_command_line_names_itself_as_it_is_run(capsys):
    with pytest.raises(SystemExit) as done:
        scan_cli(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m datasets.detreidx [-h] --root ROOT")


@pytest.mark.slow
def test_cli_prints_cameras_capture_points_and_what_the_scanner_understood(styled_root):
    proc = run_cli("-m", "datasets.detreidx", "--root", styled_root, timeout=120)
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


@pytest.mark.slow
def test_cli_reports_a_looping_folder_in_one_line_without_traceback(tiny_root_copy):
    where = os.path.join(tiny_root_copy, "train", "0002", "0002_99")
    os.symlink("0002_99", where)
    proc = run_cli("-m", "datasets.detreidx", "--root", tiny_root_copy, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and repr(where) in lines[0], proc.stderr
