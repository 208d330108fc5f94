"""tools.export: ONNX / TorchScript export of the eval embedding graph, parity with PyTorch, clear errors."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from processor.inference import FeatureExtractor
from tests.helpers.checkpoints import make_nan_checkpoint
from tests.helpers.cli import run_cli
from tools import export


@pytest.mark.parametrize("seed", range(4))
def test_pooling_matmul_equals_adaptive_avg_pool2d(seed):
    """The ONNX-friendly pooling (one matmul) against torch's own op, divisible and not, up and down."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 17, size=2))
    out = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
    x = torch.randn(3, 5, height, width, generator=torch.Generator().manual_seed(seed))
    expected = F.adaptive_avg_pool2d(x, out)
    torch.testing.assert_close(export._adaptive_avg_pool2d_as_matmul(x, out), expected, atol=1e-5, rtol=1e-5)
    square = int(rng.integers(1, 6))
    torch.testing.assert_close(export._adaptive_avg_pool2d_as_matmul(x, square),
                               F.adaptive_avg_pool2d(x, square), atol=1e-5, rtol=1e-5)
    with export.onnx_friendly_ops():
        assert F.adaptive_avg_pool2d is export._adaptive_avg_pool2d_as_matmul
    assert F.adaptive_avg_pool2d is not export._adaptive_avg_pool2d_as_matmul


def check_exported(ckpt, runner, frames):
    """The exported graph on a batch size never seen at export equals FeatureExtractor.embed_clips."""
    extractor = FeatureExtractor.from_checkpoint(ckpt, device="cpu", amp="off")
    clips = torch.randn(5, frames, 3, 32, 16, generator=torch.Generator().manual_seed(9))
    camids = torch.tensor([0, 1, 2, 0, 1])
    got = runner(clips, camids)
    assert got.shape == (5, extractor.embedding_dim)
    np.testing.assert_allclose(got, extractor.embed_clips(clips, camids).numpy(), atol=1e-4)


@pytest.mark.slow
def test_torchscript_export_parity(tiny_checkpoint, tmp_path, capsys):
    _, ckpt = tiny_checkpoint
    out = str(tmp_path / "model.pt")
    diff = export.main(["--model_path", ckpt, "--format", "torchscript", "--out", out, "--frames", "6"])
    assert diff <= 1e-4 and os.path.isfile(out)
    assert "max |diff|" in capsys.readouterr().out
    check_exported(ckpt, export.load_runner(out, "torchscript"), frames=6)


@pytest.mark.slow
def test_a_model_compile_checkpoint_exports_as_a_plain_module(tiny_checkpoint, tmp_path):
    """A run trained with MODEL.COMPILE stores it in its config; tracing cannot enter compiled regions,
    so the export builds the model uncompiled (before: "using FX to torch.jit.trace a dynamo-optimized
    function")."""
    from configs import config_from_yaml_text
    from utils.checkpoint import load_checkpoint, save_checkpoint

    _, ckpt = tiny_checkpoint
    state = load_checkpoint(ckpt)
    cfg = config_from_yaml_text(state["config"])
    cfg.defrost()
    cfg.MODEL.COMPILE = True
    state["config"] = cfg.dump()
    compiled_ckpt = str(tmp_path / "compiled_run.pth")
    save_checkpoint(state, compiled_ckpt)
    out = str(tmp_path / "model.pt")
    assert export.main(["--model_path", compiled_ckpt, "--format", "torchscript", "--out", out, "--frames", "4"]) <= 1e-4
    check_exported(ckpt, export.load_runner(out, "torchscript"), frames=4)


@pytest.mark.slow
def test_onnx_export_parity(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime (pip install onnx onnxruntime)")
    _, ckpt = tiny_checkpoint
    out = str(tmp_path / "model.onnx")
    diff = export.main(["--model_path", ckpt, "--format", "onnx", "--out", out])
    assert diff <= 1e-4 and os.path.isfile(out)
    assert "onnx parity" in capsys.readouterr().out
    import onnx

    graph = onnx.load(out).graph
    assert [i.name for i in graph.input] == ["frames", "camids"] and graph.output[0].name == "embedding"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    check_exported(ckpt, export.load_runner(out, "onnx"), frames=4)  # default T = TEST.SEQ_LEN of the checkpoint


@pytest.mark.slow
def test_failed_parity_and_bad_checkpoint_exit_cleanly(tiny_checkpoint, tmp_path):
    _, ckpt = tiny_checkpoint
    with pytest.raises(SystemExit, match=r"parity check failed: max \|diff\|"):
        export.main(["--model_path", ckpt, "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                     "--tolerance", "-1"])
    assert os.listdir(tmp_path) == []  # a file that fails its parity check is not left behind
    notes = tmp_path / "notes.pth"
    notes.write_text("hello")
    with pytest.raises(SystemExit, match="Cannot read checkpoint"):
        export.main(["--model_path", str(notes), "--format", "torchscript", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="--frames must be >= 1"):
        export.main(["--model_path", ckpt, "--format", "torchscript", "--out", str(tmp_path / "x.pt"), "--frames", "0"])
    assert not os.path.exists(tmp_path / "x.pt")


@pytest.mark.slow
def test_cli_unwritable_output_is_one_line(tiny_checkpoint):
    """A WriteFailure through the command line: one line naming the file, no traceback."""
    _, ckpt = tiny_checkpoint
    proc = run_cli("-m", "tools.export", "--model_path", ckpt, "--format", "torchscript", "--out", "/sys/m.pt",
                   timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot write '/sys/m.pt'"), proc.stderr


@pytest.mark.slow
def test_nan_checkpoint_is_an_error_naming_it(tiny_checkpoint, tmp_path):
    from utils.metrics import NonFiniteFeaturesError

    _, ckpt = tiny_checkpoint
    nan_ckpt = make_nan_checkpoint(ckpt, str(tmp_path / "diverged.pth"))
    out = tmp_path / "m.pt"
    with pytest.raises(NonFiniteFeaturesError, match=r"diverged\.pth produces non-finite features"):
        export.main(["--model_path", nan_ckpt, "--format", "torchscript", "--out", str(out)])
    assert not out.exists()


class _FirstFeatures(torch.nn.Module):
    """A stand-in graph: frames (B, T, 3, H, W), camids (B,) -> (B, 4)."""

    def forward(self, frames, camids):
        return frames.flatten(1)[:, :4] + camids[:, None]


def test_parity_is_the_worst_difference_over_every_batch_size():
    graph = _FirstFeatures()
    first = export.PARITY_BATCHES[0]

    def runner(frames, camids):   # exported graph wrong on the first batch size only
        out = graph(frames, camids).numpy()
        return out + 0.5 if frames.shape[0] == first else out

    assert export.parity(graph, runner, 2, (4, 2), 3) == pytest.approx(0.5)


def test_a_nan_parity_difference_fails_the_export(tiny_checkpoint, tmp_path, monkeypatch):
    _, ckpt = tiny_checkpoint
    monkeypatch.setattr(export, "parity", lambda *args: float("nan"))
    out = tmp_path / "m.pt"
    with pytest.raises(export.ExportError, match=r"parity check failed: max \|diff\| nan"):
        export.export(ckpt, "torchscript", str(out))
    assert not out.exists()
