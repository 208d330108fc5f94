"""bench/gpu_step.py on CPU (the smoke test of the code a GPU run uses): every figure is taken without
error, the step's regions add up to the whole step's ATen ops, and the compiled figures include the
compiled backbone-only step and the compile seconds per region."""
import json

import pytest

from tests.helpers.paths import load_bench

pytestmark = pytest.mark.slow   # every test here runs the command end to end


@pytest.fixture(scope="module")
def gpu_step():
    return load_bench("gpu_step")


@pytest.fixture(scope="module")
def cpu_run(gpu_step, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "gpu_step.json"
    gpu_step.main(["--quick", "--device", "cpu", "--models", "tiny", "--json", str(path)])
    with open(path) as handle:
        return json.load(handle)


def test_every_figure_is_taken_without_error(cpu_run):
    assert cpu_run["errors"] == {}
    tiny = cpu_run["results"]["tiny"]
    for key in ("backbone_step_s", "sas_step_eager_s", "aten_ops_sas_step_eager", "sas_step_compiled_s",
                "backbone_step_compiled_s", "ratio_compiled_sas_over_compiled_backbone", "eval_clips_per_s_compiled"):
        assert tiny[key] > 0, key


def test_regions_cover_the_whole_step(gpu_step, cpu_run):
    tiny = cpu_run["results"]["tiny"]
    for key in ("breakdown_eager", "breakdown_compiled"):
        regions = tiny[key]
        assert list(regions) == list(gpu_step.REGIONS), key
        assert all(row["aten_ops"] > 0 and row["wall_ms"] > 0 for row in regions.values()), key
    # The regions split the step without losing or adding an op (the step itself never syncs).
    assert sum(row["aten_ops"] for row in tiny["breakdown_eager"].values()) == tiny["aten_ops_sas_step_eager"]


def test_compile_seconds_are_reported_per_region(cpu_run):
    by_region = cpu_run["results"]["tiny"]["compile_s_by_region"]
    assert {"backbone block", "heads", "loss", "memory update"} <= set(by_region)
    assert all(seconds >= 0 for seconds in by_region.values())


def test_markdown_has_the_region_table(gpu_step, cpu_run):
    text = gpu_step.markdown_table(cpu_run)
    assert "| heads forward |" in text and "compile seconds by region" in text


@pytest.mark.filterwarnings("ignore:CUDA is not available, disabling CUDA profiling")
def test_kernel_profile_records_its_figures_and_errors(gpu_step):
    """The CUDA-only kernel figures, run on CPU (no CUDA kernels: zero per step)."""
    import torch

    recorder = gpu_step.Recorder(None, {})
    gpu_step.record_kernel_profile(recorder, "m", "k", lambda: torch.ones(4).sum(), torch.device("cpu"), 0.5)
    figures = recorder.data["results"]["m"]
    assert figures["kernels_per_step_k"] == 0 and figures["gpu_busy_fraction_k"] == 0
    assert figures["top_kernels_k"] == []

    def broken():
        raise RuntimeError("no kernel")

    gpu_step.record_kernel_profile(recorder, "m", "bad", broken, torch.device("cpu"), 0.5)
    assert "no kernel" in recorder.data["errors"]["m"]["kernels_bad"]
