"""The one training step (processor/step.py, issue 19): TrainStep equals a hand-written step with fp16
loss scaling, accumulation and clipping; the trainer and both benchmarks run it, and no other code
does its own step; the step never reads a tensor back to the host nor touches one on an accelerator."""
import copy
import glob
import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from configs import load_config
from loss.build import build_loss
from processor.step import StepValues, TrainStep
from solver.optimizer import build_optimizer
from tests.helpers.models import NO_DROPOUT, NUM_CLASSES, make_clips, make_tiny_sas
from tests.helpers.paths import REPO_ROOT, load_bench
from tests.helpers.training import make_tiny_trainer

CLASSES, ACCUM, MICRO_BATCHES, LR, SCALE = 3, 2, 4, 0.5, 2.0 ** 10


class RecordingMemory:
    """Stands in for the multi-proxy memory: remembers what each step hands it."""

    def __init__(self):
        self.updates = []

    def update(self, feats, labels):
        self.updates.append((feats.clone(), labels.clone()))


class TinyReID(torch.nn.Module):
    """Called like SASModel: frames (B,T,3,2,2) -> appearance logits (B, CLASSES) and memory_feat (B, 8)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(12, 8)
        self.classifier = torch.nn.Linear(8, CLASSES)
        self.memory = RecordingMemory()

    def forward(self, frames, camids, views, labels=None):
        feat = self.embed(frames.flatten(2)).mean(1)
        return {"id_logits": {"appearance": self.classifier(feat)}, "memory_feat": feat}


def tiny_loss(outputs, labels):
    """Two terms, like the SAS loss: (total (), {term: ()})."""
    logits = outputs["id_logits"]["appearance"].float()
    terms = {"id_appearance": F.cross_entropy(logits, labels), "logit_norm": 0.1 * logits.pow(2).mean()}
    return sum(terms.values()), terms


def micro_batches():
    gen = torch.Generator().manual_seed(0)
    return [{"frames": torch.randn(4, 2, 3, 2, 2, generator=gen), "camids": torch.tensor([0, 1, 2, 1]),
             "views": torch.tensor([0, 1, 1, 1]), "labels": torch.randint(0, CLASSES, (4,), generator=gen)}
            for _ in range(MICRO_BATCHES)]


def reference_run(model, batches, clip):
    """The step written out by hand: fp16 autocast, (loss / accum) x scale backward, every ACCUM
    micro-batches unscale (/ scale), clip, SGD step. Returns the gradient norm before each clip."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    norms = []
    for index, batch in enumerate(batches, start=1):
        with torch.autocast("cpu", dtype=torch.float16):
            total, _ = tiny_loss(model(batch["frames"], batch["camids"], batch["views"]), batch["labels"])
        (total / ACCUM * SCALE).backward()
        if index % ACCUM == 0:
            for p in model.parameters():
                p.grad /= SCALE
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
            optimizer.step()
            optimizer.zero_grad()
    return norms


@pytest.mark.parametrize("clip", [0.05, 1000.0], ids=["clip-binds", "clip-loose"])
def test_step_equals_a_hand_written_fp16_accumulated_clipped_step(clip):
    torch.manual_seed(0)
    model = TinyReID()
    reference = copy.deepcopy(model)
    norms = reference_run(reference, micro_batches(), clip)
    # The two cases test what they say: clipping changes the step in one, not in the other.
    assert all(n > clip for n in norms) if clip < 1 else all(n < clip for n in norms)

    cfg = load_config(None, ["SOLVER.AMP", "fp16", "SOLVER.ACCUM_STEPS", str(ACCUM), "SOLVER.GRAD_CLIP", str(clip)])
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    step = TrainStep.from_config(cfg, model, tiny_loss, torch.optim.SGD(model.parameters(), lr=LR),
                                 torch.device("cpu"), scaler=scaler)
    assert step.amp_dtype == torch.float16 and step.accum_steps == ACCUM and scaler.is_enabled()
    initial = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    results = []
    for index, batch in enumerate(micro_batches(), start=1):
        results.append(step(batch, optimizer_step=step.ends_accumulation(index, MICRO_BATCHES)))
        if index == 1:   # the first micro-batch only accumulates
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
            assert all(p.grad is not None for p in model.parameters())
    assert scaler.get_scale() == SCALE, "no step may have been skipped for infinite gradients"
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters()), "gradients are zeroed after the optimizer step"

    # Each micro-batch's loss terms and accuracy, on the device, and its features in the memory.
    assert all(isinstance(r, StepValues) and r.names == ("loss", "id_appearance", "logit_norm", "acc")
               for r in results)
    first = micro_batches()[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        outputs = initial(first["frames"], first["camids"], first["views"])
        total, terms = tiny_loss(outputs, first["labels"])
    accuracy = (outputs["id_logits"]["appearance"].argmax(1) == first["labels"]).float().mean()
    torch.testing.assert_close(results[0].values, torch.stack([total, *terms.values(), accuracy]).float())
    assert len(model.memory.updates) == MICRO_BATCHES
    torch.testing.assert_close(model.memory.updates[0][0], outputs["memory_feat"].float())
    torch.testing.assert_close(model.memory.updates[0][1], first["labels"])


def test_accumulation_steps_the_optimizer_every_accum_steps_and_at_the_epochs_end():
    step = TrainStep(TinyReID(), tiny_loss, None, None, torch.device("cpu"), accum_steps=2)
    assert [step.ends_accumulation(s, 5) for s in range(1, 6)] == [False, True, False, True, True]


# ----------------------------------------------------------------------------- who runs it
@pytest.fixture
def step_calls(monkeypatch):
    """Every TrainStep call from now on, as the class of the model it trained."""
    calls = []
    real_call = TrainStep.__call__

    def counting(self, batch, *args, **kwargs):
        calls.append(type(self.model).__name__)
        return real_call(self, batch, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", counting)
    return calls


@pytest.mark.slow
def test_the_trainer_runs_train_step_for_every_batch(step_calls, tiny_root, tmp_path):
    trainer = make_tiny_trainer(tiny_root, tmp_path / "run", "SOLVER.ACCUM_STEPS", "2")
    try:
        trainer.train_epoch(1)
        assert step_calls == ["SASModel"] * len(trainer.train_loader)
        assert trainer.train_step.model is trainer.model and trainer.scaler is trainer.train_step.scaler
        assert trainer.train_step.accum_steps == 2
    finally:
        trainer.close()


def test_bench_gpu_step_times_the_trainers_step(step_calls):
    import argparse

    gpu_step = load_bench("gpu_step")
    args = argparse.Namespace(classes=8, clips=4, frames=8, eval_frames=16, eval_clips=4, quick=True)
    work = gpu_step.Workload("tiny", args, torch.device("cpu"))
    work.sas_step()
    work.backbone_step()
    assert step_calls == ["SASModel", "BackboneOnly"]
    # Views come from the cameras as the dataset derives them (camera 0 ground, the others aerial).
    torch.testing.assert_close(work.batch["views"], (work.batch["camids"] > 0).long())


def test_bench_train_step_times_the_trainers_step(step_calls, capsys):
    from bench.gpu_step import MODELS

    train_step = load_bench("train_step")
    figures = train_step.main(["--backbone", "tiny-vit-16", "--height", "64", "--width", "32", "--clips", "4",
                               "--frames", "8", "--repeats", "1", *MODELS["tiny"][3]])
    # One warm-up and one timed call of each step, alternating, all through TrainStep.
    assert step_calls == ["BackboneOnly", "SASModel"] * 2
    assert figures["sas_step_s"] > 0 and "ratio SAS / backbone" in capsys.readouterr().out


def test_no_code_outside_processor_step_runs_its_own_training_step():
    """Backward passes and optimizer steps live in processor/step.py only (tests aside): a bench or tool
    with its own step would time or train something train.py does not run."""
    files = glob.glob(os.path.join(REPO_ROOT, "*.py")) + [
        path for folder in ("bench", "configs", "datasets", "loss", "model", "processor", "solver", "tools", "utils")
        for path in glob.glob(os.path.join(REPO_ROOT, folder, "**", "*.py"), recursive=True)]
    assert os.path.join(REPO_ROOT, "processor", "step.py") in files and len(files) > 50
    step_code = re.compile(r"\.backward\(|(optimizer|scaler)\.step\(|\.unscale_\(|clip_grad_norm_\(")
    found = [f"{os.path.relpath(path, REPO_ROOT)}:{number}" for path in files
             if path != os.path.join(REPO_ROOT, "processor", "step.py")
             for number, line in enumerate(open(path, encoding="utf-8"), start=1) if step_code.search(line)]
    assert found == []


class HostSyncDetector(TorchDispatchMode):
    """Records every op that reads a tensor value back to Python (.item(), bool(t), .tolist(), nonzero)."""

    SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique")

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        if func.name().split(".")[0] in self.SYNC_OPS:
            self.syncs.append(func.name())
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- no host sync
def make_train_step(cfg, model, device=torch.device("cpu")) -> TrainStep:
    """The trainer's step (processor.step) for ``model``, built as the trainer builds it."""
    return TrainStep.from_config(cfg, model, build_loss(cfg, NUM_CLASSES, device), build_optimizer(cfg, model), device)


def make_step_batch(device=torch.device("cpu")) -> dict:
    return dict(zip(("frames", "camids", "views", "labels"), (t.to(device) for t in make_clips(4))))


def test_training_hot_path_never_reads_a_tensor_back_to_the_host():
    """The training step (processor.step.TrainStep): forward, every loss term, backward (accumulated),
    clipping, the fused Adam step and the memory update: no .item()/bool()/nonzero."""
    cfg, model = make_tiny_sas(*NO_DROPOUT, "SOLVER.ACCUM_STEPS", "2", "SOLVER.GRAD_CLIP", "1.0")
    step = make_train_step(cfg, model.train())
    detector = HostSyncDetector()
    inputs = make_step_batch()
    with detector:
        step(inputs, optimizer_step=False)
        values = step(inputs, optimizer_step=True).values
    assert detector.syncs == []
    # The detector does see a sync when there is one.
    with detector:
        bool(values[0] > 0)
    assert detector.syncs == ["aten::_local_scalar_dense"]


class HostTensorDetector(TorchDispatchMode):
    """Records every op that takes or makes a CPU tensor. On a GPU, moving a host tensor to the device
    without pinned memory is a copy that waits for the GPU's queue to drain: a host sync."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            self.ops.append(func.name())
        return out


@pytest.mark.parametrize("training", [True, False])
def test_a_step_on_an_accelerator_touches_no_host_tensor(training):
    """The meta device stands in for a GPU: the model, the batch and the loss live there, and no op of
    the training step (processor.step.TrainStep: forward, loss, backward, clipping, optimizer step,
    memory update, the step's values) may read a host tensor (the loss's shape prior was once a CPU
    tensor copied to the device in every step). SGD: fused Adam does not run on the meta device (on
    CUDA, bench/gpu_step.py counts the step's host syncs)."""
    cfg, model = make_tiny_sas(*NO_DROPOUT, "SOLVER.OPTIMIZER", "SGD", "SOLVER.GRAD_CLIP", "1.0")
    device = torch.device("meta")
    model = model.to(device).train(training)
    step = make_train_step(cfg, model, device)
    inputs = make_step_batch(device)
    frames, camids, views = inputs["frames"], inputs["camids"], inputs["views"]
    detector = HostTensorDetector()
    with detector:
        if training:
            values = step(inputs)
        else:
            with torch.no_grad():
                model(frames, camids, views)
    assert detector.ops == []
    if training:
        assert values.values.device == device and values.names[0] == "loss"
    # The detector sees a host tensor when there is one.
    with detector:
        frames + torch.ones(()).to(device)
    assert detector.ops == ["aten::ones", "aten::_to_copy"]
