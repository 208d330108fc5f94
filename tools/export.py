"""Export the eval embedding graph of a checkpoint to ONNX or TorchScript, then check parity.

``python -m tools.export --model_path CKPT --format onnx|torchscript [--frames 16] [--out PATH]
[--tolerance 1e-4]``

The exported graph is :class:`processor.inference.EmbeddingGraph` (the one FeatureExtractor runs):
inputs ``frames`` (B, T, 3, H, W) float32, resized to INPUT.SIZE_TEST and normalised with
INPUT.PIXEL_MEAN/STD (``processor.inference.load_clips`` makes them from a tracklet's frames exactly as
evaluation does), and ``camids`` (B,) int64 (0 = ground camera; aerial sessions 1, 2, ...);
output ``embedding`` (B, E) float32, L2-normalised. The batch dimension B is dynamic; T is fixed at
``--frames`` (default TEST.SEQ_LEN). ONNX uses torch's TorchScript-based exporter (opset 17); the
TorchScript file is a trace. After writing, the file is loaded back (onnxruntime on CPU, or
torch.jit.load) and compared with PyTorch on random clips of several batch sizes; the max |diff| is
logged and must not exceed ``--tolerance`` (fp32), else the command fails. A checkpoint whose
embeddings are NaN/Inf, or an output file that cannot be written, fails with a one-line message
(``error: ...``, as every command of the project); the log lines have the format of train.py's.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import warnings

import numpy as np
import torch

from utils.cli import fail, make_parser

logger = logging.getLogger("export")

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
PARITY_BATCHES = (1, 3)  # differ from the export batch, so a batch size baked into the graph fails the check


class ExportError(RuntimeError):
    """Export or parity failure; the message says what failed."""


def example_inputs(batch: int, frames: int, size, num_cameras: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised clips (batch, frames, 3, H, W) and camera ids (batch,) in [0, num_cameras)."""
    generator = torch.Generator().manual_seed(seed)
    clips = torch.randn(batch, frames, 3, int(size[0]), int(size[1]), generator=generator)
    camids = torch.randint(0, max(num_cameras, 1), (batch,), generator=generator)
    return clips, camids


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) averaging weights of adaptive average pooling along one axis: output i
    averages inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1 (PyTorch's bins)."""
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, math.ceil((i + 1) * in_size / out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def _adaptive_avg_pool2d_as_matmul(x: torch.Tensor, output_size) -> torch.Tensor:
    """adaptive_avg_pool2d of x (N, C, H, W) as one matmul with a constant (oh*ow, H*W) matrix."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    out_h, out_w = out_h or height, out_w or width  # None keeps the input size
    # Built in numpy so the tracer records one constant, not the ops that made it.
    weights = torch.from_numpy(np.kron(adaptive_pool_matrix(height, out_h), adaptive_pool_matrix(width, out_w))).to(x)
    return torch.matmul(x.flatten(-2), weights.t()).unflatten(-1, (out_h, out_w))


@contextlib.contextmanager
def onnx_friendly_ops():
    """Swap ops the TorchScript-based ONNX exporter cannot export with a dynamic batch for equivalents.

    adaptive_avg_pool2d (MGTM's spatial token reduction): its symbolic needs the static input size,
    which is lost once the frames are folded into a dynamic batch (B*T, ...). The grid is fixed, so
    pooling is a constant matrix product. The parity check compares the result with the unpatched model.
    """
    original = torch.nn.functional.adaptive_avg_pool2d
    torch.nn.functional.adaptive_avg_pool2d = _adaptive_avg_pool2d_as_matmul
    try:
        yield
    finally:
        torch.nn.functional.adaptive_avg_pool2d = original


def export_onnx(graph: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], path: str) -> None:
    """Write ``graph`` as ONNX with a dynamic batch dimension on every input and output."""
    # Grad mode on: under no_grad, eval-mode nn.MultiheadAttention / TransformerEncoderLayer (open_clip
    # blocks, the PRSD aggregator) take the fused fast path, aten::_native_multi_head_attention,
    # which has no ONNX symbolic. With grad mode on they trace as plain matmul/softmax ops.
    with warnings.catch_warnings(), torch.enable_grad(), onnx_friendly_ops():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns about its deprecation
        torch.onnx.export(
            graph, inputs, path, dynamo=False, opset_version=ONNX_OPSET,
            input_names=["frames", "camids"], output_names=["embedding"],
            dynamic_axes={"frames": {0: "batch"}, "camids": {0: "batch"}, "embedding": {0: "batch"}},
        )


def export_torchscript(graph: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], path: str) -> None:
    """Trace ``graph`` and save it; shapes are recorded symbolically, so the batch stays dynamic."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values derived from shapes; jit deprecation
        traced = torch.jit.trace(graph, inputs, check_trace=False)
        torch.jit.save(traced, path)


def load_runner(path: str, fmt: str):
    """A callable (frames, camids) numpy/tensors -> (B, E) numpy for the exported file."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run_onnx(frames: torch.Tensor, camids: torch.Tensor) -> np.ndarray:
            return session.run(["embedding"], {"frames": frames.numpy(), "camids": camids.numpy()})[0]

        return run_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        module = torch.jit.load(path, map_location="cpu")

    def run_torchscript(frames: torch.Tensor, camids: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(frames, camids).numpy()

    return run_torchscript


def parity(graph: torch.nn.Module, runner, frames: int, size, num_cameras: int) -> float:
    """Max |exported - PyTorch| over random clips of each batch size in PARITY_BATCHES."""
    worst = 0.0
    for seed, batch in enumerate(PARITY_BATCHES, start=1):
        clips, camids = example_inputs(batch, frames, size, num_cameras, seed)
        with torch.no_grad():
            expected = graph(clips, camids).numpy()
        got = runner(clips, camids)
        if got.shape != expected.shape:
            raise ExportError(f"exported graph returned {got.shape} for batch {batch}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export(model_path: str, fmt: str, out: str, frames: int | None = None, tolerance: float = 1e-4) -> float:
    """Export ``model_path`` to ``out`` in ``fmt`` and return the parity max |diff| (ExportError above tolerance)."""
    from processor.inference import EmbeddingGraph, FeatureExtractor
    from utils.fileio import atomic_write
    from utils.metrics import check_finite_features

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it)
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ExportError(f"ONNX export needs the onnx and onnxruntime packages ({exc}): pip install onnx onnxruntime") from None
    # fp32 on CPU: the exported graph runs in full precision wherever it is deployed. Never the
    # compiled model of a MODEL.COMPILE run: tracing cannot go through torch.compile'd regions.
    extractor = FeatureExtractor.from_checkpoint(model_path, device="cpu", amp="off", num_workers=0, compile=False)
    graph = EmbeddingGraph(extractor.model).eval()
    size = tuple(int(v) for v in extractor.cfg.INPUT.SIZE_TEST)
    frames = int(extractor.cfg.TEST.SEQ_LEN if frames is None else frames)
    if frames < 1:
        raise ExportError(f"--frames must be >= 1, got {frames}")
    inputs = example_inputs(2, frames, size, extractor.num_cameras, seed=0)
    with torch.no_grad():  # a NaN/Inf model would only fail parity with "max |diff| nan": say what is wrong
        check_finite_features(graph(*inputs), extractor.model_name)
    logger.info("Exporting %s: frames (B, %d, 3, %d, %d) + camids (B,) -> embedding (B, %d) to %s",
                fmt, frames, size[0], size[1], extractor.embedding_dim, out)
    results = {}

    def write_and_check(tmp: str) -> None:
        # The file reaches ``out`` only when its parity check passes.
        (export_onnx if fmt == "onnx" else export_torchscript)(graph, inputs, tmp)
        diff = parity(graph, load_runner(tmp, fmt), frames, size, extractor.num_cameras)
        logger.info("%s parity vs PyTorch on batches %s: max |diff| = %.3g (tolerance %g)",
                    fmt, list(PARITY_BATCHES), diff, tolerance)
        if not diff <= tolerance:
            raise ExportError(f"parity check failed: max |diff| {diff:.3g} > {tolerance:g}; {out} was not written")
        results["diff"] = diff

    atomic_write(out, write_and_check)
    logger.info("Wrote %s", out)
    diff = results["diff"]
    return diff


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--model_path", required=True, help="checkpoint written by train.py")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip T (default: the checkpoint's TEST.SEQ_LEN)")
    parser.add_argument("--out", default="", help="output file (default model.onnx / model.pt)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed parity |diff| (default 1e-4)")
    return parser.parse_args(argv)


def main(argv=None) -> float:
    """Export; run through utils.cli.run_main, which prints write failures and non-finite features as
    one line. Input and parity errors exit here with one line (utils.cli.fail)."""
    args = parse_args(argv)
    from model.weights import PretrainedWeightsError
    from processor.inference import InferenceInputError
    from utils.checkpoint import CheckpointError
    from utils.logger import setup_logging

    setup_logging(None)  # the console format of train.py and evaluate_all_cases.py
    out = args.out or ("model.onnx" if args.format == "onnx" else "model.pt")
    try:
        return export(args.model_path, args.format, out, frames=args.frames, tolerance=args.tolerance)
    except (CheckpointError, ExportError, InferenceInputError, PretrainedWeightsError) as exc:
        fail(str(exc))   # the one "error: ..." line of every command


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
