"""GPU training and inference efficiency of SAS-VPReID, measured side by side in one run.

On CUDA, for each model (ViT-B/16 at 256x128, ViT-L/14 at 252x126; paper batch 16 clips x 8 frames,
371 classes, bf16 autocast, random weights, no downloads) it measures:
  bf16 matmul peak (TFLOP/s, once per run); backbone-only training step (CLIP + time-mean class
  token + linear CE + Adam); full SAS training step (forward, every loss term, backward, Adam,
  memory update) eager and with MODEL.COMPILE (regional torch.compile) and their ratios (both steps
  are processor.step.TrainStep, the step train.py runs, built from the config as the trainer
  builds it: AMP and loss scaling, accumulation, clipping, the step's loss terms and accuracy); model FLOP
  utilisation (FlopCounterMode forward x 3 / step time / peak); CUDA kernels per step and GPU-busy
  time (torch.profiler) and the most frequent kernels; host syncs per step (CUDA sync-debug mode);
  peak memory; compile time (first compiled step minus a compiled step);
  eval clips/s at 16 frames, eager and compiled; ATen ops per eager step (below autograd, no views).
On CPU it runs the same code on a tiny model as a smoke test; the ATen op count per step is then the
deterministic proxy of kernel launches.

Output: one line per measurement as it is taken, a Markdown table at the end, and a JSON file
(``--json``) rewritten after every measurement, so that a timeout still leaves partial results.
Every measurement is in its own try/except: an error is recorded and the run goes on.

    python bench/gpu_step.py [--models b16,l14] [--quick] [--json gpu_step.json] [--device auto]
        [--compile-mode default,reduce-overhead] [--compile-models b16] [--skip-eager | --skip-compile]

bench/gpu_session.sh runs this and the trainer's CUDA checks as one device command.
"""
from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import sys
import tempfile
import time
import traceback
import warnings

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from configs import load_config  # noqa: E402
from loss.build import build_loss  # noqa: E402
from model.build import COMPILE_MODES, begin_compiled_step, build_model, compile_options, compile_regions  # noqa: E402
from processor.encoding import autocast, camera_views  # noqa: E402
from processor.step import TrainStep  # noqa: E402
from solver.optimizer import build_optimizer  # noqa: E402

# name -> (backbone, height, width, extra config options). "tiny" is the CPU smoke-test model.
MODELS = {
    "b16": ("ViT-B-16", 256, 128, []),
    "l14": ("ViT-L-14", 252, 126, []),
    "tiny": ("tiny-vit-16", 64, 32, [
        "MODEL.MGTM.SPATIAL_TOKENS", "4", "MODEL.MGTM.HEADS", "4", "MODEL.PRSD.FEAT_DIM", "32",
        "MODEL.PRSD.HIDDEN_DIM", "32", "MODEL.PRSD.ITERATIONS", "2", "MODEL.PRSD.AGG_LAYERS", "1",
        "MODEL.PRSD.AGG_HEADS", "2", "MODEL.PRSD.AGG_FFN_DIM", "64"]),
}
NUM_CAMERAS = 6


def launches_kernel(func) -> bool:
    """Whether an op dispatched below autograd counts as about one kernel launch: views and the
    profiler's range markers do not."""
    return not getattr(func, "is_view", False) and getattr(func, "namespace", "") != "profiler"


class AtenOpCounter(TorchDispatchMode):
    """Counts ATen ops dispatched below autograd, views and profiler ranges excluded (each is about one
    kernel launch)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += launches_kernel(func)
        return func(*args, **(kwargs or {}))


class Recorder:
    """Collects results per model, prints each as it comes and rewrites the JSON file atomically."""

    def __init__(self, json_path: str | None, meta: dict):
        self.json_path = json_path
        self.data = {"meta": meta, "results": {}, "errors": {}}
        self.flush()

    def put(self, model: str, key: str, value) -> None:
        self.data["results"].setdefault(model, {})[key] = value
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"- {model} {key}: {shown}", flush=True)
        self.flush()

    def error(self, model: str, key: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"[:2000]
        self.data["errors"].setdefault(model, {})[key] = text
        print(f"- {model} {key}: ERROR {text.splitlines()[0] if text else ''}", flush=True)
        traceback.print_exc(file=sys.stderr)
        self.flush()

    def flush(self) -> None:
        if not self.json_path:
            return
        folder = os.path.dirname(os.path.abspath(self.json_path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gpu_step.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.data, handle, indent=1, default=str)
        os.replace(tmp, self.json_path)


def measure(recorder: Recorder, model: str, key: str):
    """Decorator-like helper: run fn(), record its value under key, record the error on failure."""

    def run(fn):
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a bench goes on after a failed measurement
            recorder.error(model, key, exc)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None
        if value is not None:
            recorder.put(model, key, value)
        return value

    return run


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Mean wall time of fn() over ``repeats`` calls after ``warmup`` calls (one sync at each end)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def matmul_peak(device: torch.device, quick: bool) -> float:
    """TFLOP/s of a large square matmul (bf16 on CUDA, fp32 on CPU)."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = seconds_per_call(lambda: a @ b, device, warmup=3, repeats=10 if quick else 30)
    return 2 * size**3 / seconds / 1e12


def kernel_profile(fn, device: torch.device, steps: int,
                   names: collections.Counter | None = None) -> tuple[float, float]:
    """(CUDA kernels per call (memcpy/memset not counted), GPU-busy ms per call: union of the intervals
    of all device activity) over ``steps`` calls; ``names`` (if given) counts the kernels by name."""
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    intervals, kernels = [], 0
    for event in prof.events():
        on_device = "CUDA" in str(getattr(event, "device_type", ""))
        if on_device and not getattr(event, "is_user_annotation", False):
            intervals.append((event.time_range.start, event.time_range.end))
            is_kernel = not event.name.lower().startswith(("memcpy", "memset"))
            kernels += is_kernel
            if names is not None and is_kernel:
                names[event.name[:80]] += 1
    return kernels / steps, union_length(sorted(intervals)) / 1000.0 / steps  # time_range is in microseconds


def host_syncs(fn, device: torch.device) -> tuple[int, list[str]] | None:
    """Host syncs in one call of fn on CUDA, as torch's sync-debug mode reports them (.item(), a copy
    from pageable host memory, nonzero, ...): (count, file:line of the first 5); None elsewhere."""
    if device.type != "cuda":
        return None
    # Objects of earlier measurements (profilers, graphs) are collected first: a finaliser that runs
    # inside fn and synchronises would be counted as fn's sync.
    gc.collect()
    synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs), [f"{os.path.relpath(w.filename)}:{w.lineno}" for w in syncs[:5]]


def record_kernel_profile(recorder: Recorder, name: str, key: str, fn, device: torch.device,
                          seconds: float | None, steps: int = 3) -> None:
    """Per call of fn (``seconds`` long, as timed without the profiler): kernels_per_step_``key``,
    gpu_busy_ms_``key``, gpu_busy_fraction_``key`` and top_kernels_``key`` (the 15 most frequent
    kernels: where the launches go)."""
    names = collections.Counter()
    try:
        kernels, busy_ms = kernel_profile(fn, device, steps, names)
    except Exception as exc:  # noqa: BLE001 - a bench goes on after a failed measurement
        recorder.error(name, f"kernels_{key}", exc)
        return
    recorder.put(name, f"kernels_per_step_{key}", kernels)
    recorder.put(name, f"gpu_busy_ms_{key}", busy_ms)
    if seconds:
        recorder.put(name, f"gpu_busy_fraction_{key}", busy_ms / 1000 / seconds)
    recorder.put(name, f"top_kernels_{key}", [(kernel, n / steps) for kernel, n in names.most_common(15)])


def record_host_syncs(recorder: Recorder, name: str, key: str, fn, device: torch.device) -> None:
    """``key``: host syncs per call of fn; ``key``_sites: where the first ones come from."""
    try:
        found = host_syncs(fn, device)
    except Exception as exc:  # noqa: BLE001 - a bench goes on after a failed measurement
        recorder.error(name, key, exc)
        return
    if found is not None:
        recorder.put(name, key, found[0])
        recorder.put(name, key + "_sites", found[1])


def aten_ops(fn) -> int:
    counter = AtenOpCounter()
    with counter:
        fn()
    return counter.count


def forward_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


REGIONS = ("backbone forward", "heads forward", "loss", "backward", "optimizer", "memory update")


class RegionCounter(TorchDispatchMode):
    """ATen ops per named region of a step (as :class:`AtenOpCounter`): the CPU proxy of
    :func:`region_breakdown`."""

    def __init__(self):
        super().__init__()
        self.region = "other"
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if launches_kernel(func):
            self.counts[self.region] = self.counts.get(self.region, 0) + 1
        return func(*args, **(kwargs or {}))


class StepRegions:
    """Cuts a training step into :data:`REGIONS` for :func:`region_breakdown`.

    ``enter(name)`` waits for the device (so that every kernel of a region runs inside its wall-clock
    interval) and opens a profiler range ``region:<name>``; forward hooks on the backbone split the
    model's forward into backbone and heads without repeating its code.
    """

    def __init__(self, work: "Workload", counter: RegionCounter | None = None):
        self.work, self.counter = work, counter
        self.scope = None
        self.wall: dict[str, float] = {}
        self._name, self._start = None, 0.0

    def enter(self, name: str | None) -> None:
        synchronize(self.work.device)
        now = time.perf_counter()
        if self.scope is not None:
            self.scope.__exit__(None, None, None)
            self.wall[self._name] = self.wall.get(self._name, 0.0) + now - self._start
            self.scope = None
        if name is not None:
            self.scope = torch.profiler.record_function(f"region:{name}")
            self.scope.__enter__()
            self._name, self._start = name, time.perf_counter()
        if self.counter is not None:
            self.counter.region = name or "other"

    def step(self) -> None:
        backbone = self.work.model.backbone
        hooks = [backbone.register_forward_pre_hook(lambda *_: self.enter("backbone forward")),
                 backbone.register_forward_hook(lambda *_: self.enter("heads forward"))]
        try:
            self.enter("backbone forward")  # and the model's input preparation before the backbone call
            self.work.sas_step(self.enter)
        finally:
            self.enter(None)
            for hook in hooks:
                hook.remove()


def region_breakdown(work: "Workload", steps: int) -> dict:
    """Per region of the training step (:data:`REGIONS`), averaged over ``steps`` steps with a device
    sync at each region boundary: wall ms; on CUDA also kernels and GPU-busy ms (wall minus busy is
    host time: Python, dispatch and launches); on CPU ATen ops. The syncs make the step a little
    slower than an unbroken one; the split, not the sum, is the point."""
    result: dict[str, dict] = {}
    if work.device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        regions = StepRegions(work)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                regions.step()
        events = prof.events()
        # The host-side ranges only: with CUDA activity each range also has a device-side twin.
        ranges = [(e.name[len("region:"):], e.time_range.start, e.time_range.end) for e in events
                  if e.name.startswith("region:") and e.device_type == torch.autograd.DeviceType.CPU]
        device_events = [(e.time_range.start, e.time_range.end, e.name) for e in events
                         if "CUDA" in str(getattr(e, "device_type", "")) and not getattr(e, "is_user_annotation", False)]
        for name, lo, hi in ranges:
            inside = sorted((s, t) for s, t, kernel in device_events if lo <= s < hi)
            entry = result.setdefault(name, {"kernels": 0.0, "gpu_busy_ms": 0.0})
            entry["kernels"] += sum(1 for s, t, kernel in device_events if lo <= s < hi
                                    and not kernel.lower().startswith(("memcpy", "memset"))) / steps
            entry["gpu_busy_ms"] += union_length(inside) / 1000.0 / steps
    else:
        counter = RegionCounter()
        regions = StepRegions(work, counter)
        with counter:
            for _ in range(steps):
                regions.step()
        for name, count in counter.counts.items():
            if name != "other":
                result.setdefault(name, {})["aten_ops"] = count / steps
    for name, seconds in regions.wall.items():
        result.setdefault(name, {})["wall_ms"] = seconds * 1000.0 / steps
    return {name: {k: round(v, 3) for k, v in result[name].items()} for name in REGIONS if name in result}


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by sorted (start, end) intervals (overlaps counted once)."""
    busy, end = 0.0, float("-inf")
    for lo, hi in intervals:
        if hi <= end:
            continue
        busy += hi - max(lo, end)
        end = hi
    return busy


def compile_seconds_by_region() -> dict:
    """Compilation seconds (Dynamo + AOTAutograd + Inductor) per compiled region since the last
    ``clear_compilation_metrics()``: backbone block, heads, loss, memory update (its ``no_grad``
    wrapper is named ``inner``), and the backward graphs, which compile lazily in their own records."""
    from torch._dynamo.utils import get_compilation_metrics

    labels = {"forward": "backbone block", "heads": "heads", "__call__": "loss", "inner": "memory update",
              "update": "memory update", None: "backward graphs"}
    seconds: dict[str, float] = {}
    for metric in get_compilation_metrics():
        name = labels.get(metric.co_name or None, metric.co_name)
        # A frame's Dynamo time includes its AOTAutograd and Inductor time (they run inside it); a
        # backward graph is compiled lazily, in its own record.
        if metric.co_name:
            total_us = getattr(metric, "dynamo_cumulative_compile_time_us", None) or 0
        else:
            total_us = (getattr(metric, "backward_cumulative_compile_time_us", None)
                        or getattr(metric, "inductor_cumulative_compile_time_us", None) or 0)
        seconds[name] = round(seconds.get(name, 0.0) + total_us / 1e6, 2)
    return seconds


class BackboneOnly(torch.nn.Module):
    """The baseline of the SAS / backbone ratio: a CLIP tower (the SAS model's own, shared), the time
    mean of each frame's class token and one linear classifier. Called like SASModel, so that the same
    :class:`TrainStep` trains it: forward(frames (B,T,3,H,W), camids (B,), views (B,), labels) ->
    {"id_logits": {"appearance": (B, classes)}}; :func:`backbone_only_loss` is its loss."""

    memory = None           # no memory to update after the step
    cuda_graph_steps = False  # set as the SAS model's when its blocks are compiled (begin_compiled_step)

    def __init__(self, backbone: torch.nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = torch.nn.Linear(backbone.width, num_classes, bias=False)

    def forward(self, frames: torch.Tensor, camids: torch.Tensor, views: torch.Tensor, labels=None) -> dict:
        b, t = frames.shape[:2]
        tokens, _ = self.backbone(frames.flatten(0, 1), camids.repeat_interleave(t), views.repeat_interleave(t))
        return {"id_logits": {"appearance": self.classifier(tokens[:, 0].reshape(b, t, -1).mean(1))}}


def backbone_only_loss(outputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of :class:`BackboneOnly`'s logits -> (total (), {"id_appearance": ()}), as SAS's losses."""
    loss = F.cross_entropy(outputs["id_logits"]["appearance"].float(), labels)
    return loss, {"id_appearance": loss}


class Workload:
    """One model at the paper batch with its training step, backbone-only step and eval forward. Both
    steps are :class:`TrainStep`, built as the trainer builds its step (config, model, loss, optimizer):
    the figures are those of the step train.py runs."""

    def __init__(self, name: str, args, device: torch.device):
        backbone_name, height, width, extra = MODELS[name]
        tiny = name == "tiny"
        self.device = device
        clips, frames, eval_frames = (4, 8, 16) if tiny else (args.clips, args.frames, args.eval_frames)
        classes = args.classes
        self.warmup, self.repeats = (1, 2) if tiny else ((2, 5) if args.quick else (3, 10))
        amp = "off" if device.type == "cpu" else "bf16"
        opts = ["MODEL.BACKBONE", backbone_name, "MODEL.PRETRAIN_PATH", "", "MODEL.PRETRAIN_TAG", "",
                "MODEL.DEVICE", device.type, "SOLVER.AMP", amp, "INPUT.SIZE_TRAIN", f"[{height},{width}]",
                "INPUT.SIZE_TEST", f"[{height},{width}]", "DATALOADER.SEQ_LEN", str(frames)] + extra
        self.cfg = cfg = load_config(None, opts)
        self.description = (f"{backbone_name} {height}x{width}, {clips} clips x {frames} frames, {classes} classes, "
                            f"{'bf16 autocast' if amp == 'bf16' else 'fp32'}, eval {eval_frames} frames")

        torch.manual_seed(0)
        self.model = model = build_model(cfg, num_classes=classes, num_cameras=NUM_CAMERAS).to(device).train()
        self.loss_fn = build_loss(cfg, classes, device)
        self.train_step = TrainStep.from_config(cfg, model, self.loss_fn, build_optimizer(cfg, model), device)
        camids = torch.arange(clips, device=device) % NUM_CAMERAS
        # A training batch as the loader gives it (views from the cameras, as the dataset derives them).
        self.batch = {"frames": torch.randn(clips, frames, 3, height, width, device=device), "camids": camids,
                      "views": camera_views(camids),
                      "labels": torch.arange(clips, device=device) // 4 % classes}  # P x K, K = 4 clips per identity

        self.baseline = BackboneOnly(model.backbone, classes).to(device).train()
        base_params = [p for p in self.baseline.parameters() if p.requires_grad]
        base_optimizer = torch.optim.Adam(base_params, lr=cfg.SOLVER.BACKBONE_LR, fused=True)  # as build_optimizer
        self.baseline_step = TrainStep.from_config(cfg, self.baseline, backbone_only_loss, base_optimizer, device)

        self.eval_video = torch.randn(args.eval_clips if not tiny else 4, eval_frames, 3, height, width, device=device)
        self.eval_camids = torch.arange(self.eval_video.shape[0], device=device) % NUM_CAMERAS

    def compile(self, mode: str, backend: str, heads: bool = True) -> None:
        """What build_model / build_loss do for MODEL.COMPILE, with a choosable backend; ``heads=False``
        compiles the backbone blocks alone (and leaves the loss eager)."""
        compile_regions(self.model, mode, backend=backend, heads=heads)
        self.baseline.cuda_graph_steps = self.model.cuda_graph_steps   # its blocks are the SAS model's
        if heads:
            self.train_step.loss_fn = torch.compile(self.loss_fn.__call__, **compile_options(mode, backend))

    def _inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.batch[key] for key in ("frames", "camids", "views", "labels"))

    def backbone_forward(self):
        """The baseline step's forward and loss (for the FLOP count)."""
        return self.baseline_step.forward_loss(*self._inputs())

    def backbone_step(self) -> None:
        self.baseline_step(self.batch)

    def sas_forward(self):
        """The SAS step's forward and loss (for the FLOP count)."""
        return self.train_step.forward_loss(*self._inputs())

    def sas_step(self, region=None) -> None:
        """The training step of train.py (no host sync). ``region(name)`` is called where each of
        :data:`REGIONS` begins (the forward's two by hooks; see :class:`StepRegions`)."""
        self.train_step(self.batch, region=region)

    def eval_forward(self) -> torch.Tensor:
        """Eval-mode forward of the test clips; leaves the model in train mode."""
        self.model.eval()
        begin_compiled_step(self.model)
        try:
            with torch.no_grad(), autocast(self.device, self.train_step.amp_dtype):
                return self.model(self.eval_video, self.eval_camids, camera_views(self.eval_camids))["embedding"]
        finally:
            self.model.train()

    def seconds(self, fn) -> float:
        return seconds_per_call(fn, self.device, self.warmup, self.repeats)

    def eval_clips_per_s(self) -> float:
        return self.eval_video.shape[0] / self.seconds(self.eval_forward)

    def peak_memory_gib(self, fn) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.reset_peak_memory_stats(self.device)
        fn()
        synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) / 2**30


def bench_eager(name: str, args, device: torch.device, recorder: Recorder, peak_tflops: float | None) -> None:
    """Backbone-only and full SAS step, FLOPs, MFU, ATen ops, kernels, GPU-busy time, memory, eval (eager)."""
    work = Workload(name, args, device)
    record = lambda key: measure(recorder, name, key)  # noqa: E731
    recorder.put(name, "setup", work.description)
    base_s = record("backbone_step_s")(lambda: work.seconds(work.backbone_step))
    eager_s = record("sas_step_eager_s")(lambda: work.seconds(work.sas_step))
    if base_s and eager_s:
        recorder.put(name, "ratio_eager_sas_over_backbone", eager_s / base_s)
    base_flops = record("backbone_forward_gflop")(lambda: forward_flops(work.backbone_forward) / 1e9)
    sas_flops = record("sas_forward_gflop")(lambda: forward_flops(work.sas_forward) / 1e9)
    if peak_tflops:
        if base_flops and base_s:
            recorder.put(name, "mfu_backbone", 3 * base_flops * 1e9 / base_s / (peak_tflops * 1e12))
        if sas_flops and eager_s:
            recorder.put(name, "mfu_sas_eager", 3 * sas_flops * 1e9 / eager_s / (peak_tflops * 1e12))
    record("aten_ops_backbone_step")(lambda: aten_ops(work.backbone_step))
    record("aten_ops_sas_step_eager")(lambda: aten_ops(work.sas_step))
    record("aten_ops_eval_forward")(lambda: aten_ops(work.eval_forward))
    if device.type == "cuda":
        record_kernel_profile(recorder, name, "backbone", work.backbone_step, device, base_s)
        record_kernel_profile(recorder, name, "sas_eager", work.sas_step, device, eager_s)
        record("peak_mem_gib_sas_eager")(lambda: work.peak_memory_gib(work.sas_step))
        record_host_syncs(recorder, name, "host_syncs_sas_eager", work.sas_step, device)
    record("breakdown_eager")(lambda: region_breakdown(work, 3))
    record("eval_clips_per_s_eager")(work.eval_clips_per_s)


def bench_compiled(name: str, mode: str, args, device: torch.device, recorder: Recorder,
                   peak_tflops: float | None) -> None:
    """The same workload with MODEL.COMPILE's regional compilation (blocks, heads, memory update, loss)
    in MODEL.COMPILE_MODE ``mode``; results under ``name`` (default mode) or ``name/mode``.

    Should the compiled step fail, the backbone blocks alone are compiled and measured instead (keys
    ending in ``_blocks_only``), so the run still says what compiling the backbone gives."""
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    label = name if mode == "default" else f"{name}/{mode}"
    recorder.put(label, "compile_backend", f"{backend} ({mode})")
    for suffix in ("", "_blocks_only"):
        work = Workload(name, args, device)
        work.compile(mode, backend, heads=not suffix)
        if measure_compiled(label, suffix, work, device, recorder, peak_tflops, eager_name=name):
            return
        del work
        gc.collect()
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def measure_compiled(name: str, suffix: str, work: Workload, device: torch.device, recorder: Recorder,
                     peak_tflops: float | None, eager_name: str) -> bool:
    """Compiled-step figures under keys ending in ``suffix`` (ratios against the eager figures of
    ``eager_name``); False when the first compiled step failed."""
    record = lambda key: measure(recorder, name, key + suffix)  # noqa: E731

    def first_step() -> float:
        start = time.perf_counter()
        work.sas_step()
        synchronize(device)
        return time.perf_counter() - start

    from torch._dynamo.utils import clear_compilation_metrics

    clear_compilation_metrics()
    first = record("compiled_first_step_s")(first_step)
    if first is None:
        return False
    record("compile_s_by_region")(compile_seconds_by_region)
    compiled_s = record("sas_step_compiled_s")(lambda: work.seconds(work.sas_step))
    # The backbone-only step on the same compiled blocks: the heads' share of the compiled step.
    base_compiled_s = record("backbone_step_compiled_s")(lambda: work.seconds(work.backbone_step))
    earlier = recorder.data["results"].get(eager_name, {})
    eager_s, base_s, sas_flops = (earlier.get(k) for k in ("sas_step_eager_s", "backbone_step_s", "sas_forward_gflop"))
    if compiled_s:
        recorder.put(name, "compile_time_s" + suffix, first - compiled_s)
        if eager_s:
            recorder.put(name, "ratio_compiled_over_eager" + suffix, compiled_s / eager_s)
        if base_s:
            recorder.put(name, "ratio_compiled_sas_over_eager_backbone" + suffix, compiled_s / base_s)
        if base_compiled_s:
            recorder.put(name, "ratio_compiled_sas_over_compiled_backbone" + suffix, compiled_s / base_compiled_s)
        if peak_tflops and sas_flops:
            recorder.put(name, "mfu_sas_compiled" + suffix, 3 * sas_flops * 1e9 / compiled_s / (peak_tflops * 1e12))
    if device.type == "cuda":
        record_kernel_profile(recorder, name, "sas_compiled" + suffix, work.sas_step, device, compiled_s)
        record("peak_mem_gib_sas_compiled")(lambda: work.peak_memory_gib(work.sas_step))
        record_host_syncs(recorder, name, "host_syncs_sas_compiled" + suffix, work.sas_step, device)
    record("breakdown_compiled" + suffix)(lambda: region_breakdown(work, 3))

    def compiled_eval() -> float:
        start = time.perf_counter()
        work.eval_forward()  # compiles the eval graphs
        synchronize(device)
        recorder.put(name, "eval_compile_s" + suffix, time.perf_counter() - start)
        return work.eval_clips_per_s()

    record("eval_clips_per_s_compiled")(compiled_eval)
    return True


ROWS = [
    ("setup", "setup", None),
    ("backbone-only train step (s)", "backbone_step_s", "{:.4f}"),
    ("full SAS train step, eager (s)", "sas_step_eager_s", "{:.4f}"),
    ("full SAS train step, MODEL.COMPILE (s)", "sas_step_compiled_s", "{:.4f}"),
    ("ratio eager SAS / backbone", "ratio_eager_sas_over_backbone", "{:.3f}"),
    ("ratio compiled SAS / eager SAS", "ratio_compiled_over_eager", "{:.3f}"),
    ("ratio compiled SAS / eager backbone", "ratio_compiled_sas_over_eager_backbone", "{:.3f}"),
    ("backbone-only train step, compiled blocks (s)", "backbone_step_compiled_s", "{:.4f}"),
    ("ratio compiled SAS / compiled backbone", "ratio_compiled_sas_over_compiled_backbone", "{:.3f}"),
    ("forward GFLOP backbone / SAS", ("backbone_forward_gflop", "sas_forward_gflop"), "{:.1f}"),
    ("MFU backbone", "mfu_backbone", "{:.1%}"),
    ("MFU SAS eager", "mfu_sas_eager", "{:.1%}"),
    ("MFU SAS compiled", "mfu_sas_compiled", "{:.1%}"),
    ("CUDA kernels / step: backbone", "kernels_per_step_backbone", "{:.0f}"),
    ("CUDA kernels / step: SAS eager", "kernels_per_step_sas_eager", "{:.0f}"),
    ("CUDA kernels / step: SAS compiled", "kernels_per_step_sas_compiled", "{:.0f}"),
    ("GPU busy ms / step: SAS eager", "gpu_busy_ms_sas_eager", "{:.1f}"),
    ("GPU busy fraction: SAS eager", "gpu_busy_fraction_sas_eager", "{:.0%}"),
    ("GPU busy fraction: SAS compiled", "gpu_busy_fraction_sas_compiled", "{:.0%}"),
    ("host syncs / step: SAS eager", "host_syncs_sas_eager", "{}"),
    ("host syncs / step: SAS compiled", "host_syncs_sas_compiled", "{}"),
    ("peak memory GiB eager / compiled", ("peak_mem_gib_sas_eager", "peak_mem_gib_sas_compiled"), "{:.1f}"),
    ("compile backend", "compile_backend", None),
    ("fallback, blocks only compiled: SAS step (s)", "sas_step_compiled_s_blocks_only", "{:.4f}"),
    ("first compiled step (s)", "compiled_first_step_s", "{:.1f}"),
    ("compile time (s)", "compile_time_s", "{:.1f}"),
    ("eval compile (s)", "eval_compile_s", "{:.1f}"),
    ("eval clips/s eager", "eval_clips_per_s_eager", "{:.0f}"),
    ("eval clips/s compiled", "eval_clips_per_s_compiled", "{:.0f}"),
    ("ATen ops / step: backbone", "aten_ops_backbone_step", "{}"),
    ("ATen ops / step: SAS eager", "aten_ops_sas_step_eager", "{}"),
    ("ATen ops / eval forward", "aten_ops_eval_forward", "{}"),
]


def markdown_table(data: dict) -> str:
    results, errors = data["results"], data["errors"]
    names = [n for n in results if n != "run"]

    def cell(name: str, key, fmt) -> str:
        keys = key if isinstance(key, tuple) else (key,)
        parts = []
        for k in keys:
            if k in results.get(name, {}):
                value = results[name][k]
                parts.append(fmt.format(value) if fmt and isinstance(value, (int, float)) else str(value))
            elif k in errors.get(name, {}):
                parts.append("error")
            else:
                parts.append("–")
        return " / ".join(parts)

    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(n, key, fmt) for n in names) + " |")
    run = results.get("run", {})
    if "matmul_peak_tflops" in run:
        lines.append(f"\nmatmul peak ({run.get('matmul_dtype')}): {run['matmul_peak_tflops']:.1f} TFLOP/s")
    for name in names:
        lines.extend(breakdown_table(name, results[name]))
    for name, errs in errors.items():
        for key, text in errs.items():
            lines.append(f"\nerror {name} {key}: {text.splitlines()[0] if text else ''}")
    return "\n".join(lines)


def breakdown_table(name: str, results: dict) -> list[str]:
    """Markdown lines: the step's regions (eager / compiled): wall ms, GPU-busy ms and kernels on CUDA,
    ATen ops on CPU; then the compile seconds per compiled region."""
    modes = [(label, results[key]) for label, key in (("eager", "breakdown_eager"), ("compiled", "breakdown_compiled"))
             if isinstance(results.get(key), dict)]
    lines = []
    if modes:
        fields = [("wall ms", "wall_ms", "{:.1f}"), ("GPU-busy ms", "gpu_busy_ms", "{:.1f}"),
                  ("kernels", "kernels", "{:.0f}"), ("ATen ops", "aten_ops", "{:.0f}")]
        fields = [f for f in fields if any(f[1] in row for _, table in modes for row in table.values())]
        header = [f"{label} {title}" for label, _ in modes for title, _, _ in fields]
        lines += ["", f"{name}: training step by region (device synchronised at each boundary)", "",
                  "| region | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for region in REGIONS:
            cells = []
            for _, table in modes:
                row = table.get(region, {})
                cells += [fmt.format(row[key]) if key in row else "–" for _, key, fmt in fields]
            lines.append(f"| {region} | " + " | ".join(cells) + " |")
    if isinstance(results.get("compile_s_by_region"), dict):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in results["compile_s_by_region"].items()) or (
            "nothing compiled (graphs reused from an earlier compilation in this process)")
        lines += ["", f"{name}: compile seconds by region (first compiled step): {parts}"]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help="comma list of b16,l14,tiny (default: b16,l14 on CUDA, "
                                                     "tiny on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="fewer timed repeats")
    parser.add_argument("--json", default="", help="JSON results file (rewritten after every measurement)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--classes", type=int, default=371)
    parser.add_argument("--eval-clips", type=int, default=32)
    parser.add_argument("--eval-frames", type=int, default=16)
    parser.add_argument("--compile-mode", default="default",
                        help="comma list of MODEL.COMPILE_MODE: default, max-autotune-no-cudagraphs, reduce-overhead")
    parser.add_argument("--compile-models", default="", help="models for the compiled figures (default: --models)")
    parser.add_argument("--compile-backend", default="",
                        help="torch.compile backend (default: inductor on CUDA, eager on CPU)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-eager", action="store_true",
                        help="compiled figures only (a second run with another --compile-mode)")
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    names = [n.strip() for n in args.models.split(",") if n.strip()] or (
        ["b16", "l14"] if device.type == "cuda" else ["tiny"])
    compile_names = [n.strip() for n in args.compile_models.split(",") if n.strip()] or names
    modes = [m.strip() for m in args.compile_mode.split(",") if m.strip()]
    unknown = [n for n in names + compile_names if n not in MODELS]
    if unknown:
        parser.error(f"unknown --models / --compile-models {unknown}; choose from {sorted(MODELS)}")
    bad_modes = [m for m in modes if m not in COMPILE_MODES]
    if bad_modes:
        parser.error(f"unknown --compile-mode {bad_modes}; choose from {list(COMPILE_MODES)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "argv": sys.argv[1:],
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    recorder = Recorder(args.json or None, meta)
    print(f"# bench/gpu_step.py on {meta['device']}, torch {meta['torch']}", flush=True)
    peak = measure(recorder, "run", "matmul_peak_tflops")(lambda: matmul_peak(device, args.quick))
    recorder.put("run", "matmul_dtype", "bf16" if device.type == "cuda" else "fp32")
    run_start = time.perf_counter()
    # All eager figures first, then the compiled ones (per model, each mode): a run cut short by its
    # time limit still has the eager table of every model.
    jobs = [] if args.skip_eager else [(f"eager_{name}", name, functools.partial(bench_eager, name)) for name in names]
    if not args.skip_compile:
        jobs += [(f"compiled_{name}_{mode}", name, functools.partial(bench_compiled, name, mode))
                 for name in compile_names for mode in modes]
    for job, name, bench in jobs:
        try:
            bench(args, device, recorder, peak)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory while building: go on
            recorder.error(name, job, exc)
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        recorder.put("run", f"elapsed_after_{job}_s", time.perf_counter() - run_start)
    print()
    print(markdown_table(recorder.data), flush=True)


if __name__ == "__main__":
    main()
