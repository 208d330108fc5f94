"""bench/scan.py runs small (the scan benchmark: the frame listing of a synthetic index, a cold and a cached
start) and leaves the scanner's listing function as it found it."""
import pytest

from datasets.detreidx import scan as scanner
from tests.helpers.paths import load_bench


@pytest.mark.slow
def test_bench_scan_runs_small_and_leaves_the_listing_function_alone(capsys):
    bench = load_bench("scan")
    real = scanner._list_frame_names
    assert bench.main(["--tracklets", "12", "--frames", "30", "--pids", "4"]) == 0
    assert scanner._list_frame_names is real
    out = capsys.readouterr().out
    assert "index of 12 tracklets x 30 frame names = 360 frames" in out and "cached start" in out
