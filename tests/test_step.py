"""The one training step (processor/step.py, issue 19): TrainStep equals a hand-written step with fp16
loss scaling, accumulation and clipping; the trainer and both benchmarks run it, and no other code
does its own step."""
import copy
import glob
import importlib.util
import os
import re

import pytest
import torch
import torch.nn.functional as F

from configs import load_config
from processor.step import StepValues, TrainStep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def load_bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trainer_runs_train_step_for_every_batch(step_calls, tmp_path):
    from tests.datasets_fixtures import make_tiny_root
    from tests.test_training_memory_rebuild import make_trainer

    trainer = make_trainer(make_tiny_root(tmp_path), tmp_path / "run", "SOLVER.ACCUM_STEPS", "2")
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
    files = glob.glob(os.path.join(ROOT, "*.py")) + [
        path for folder in ("bench", "configs", "datasets", "loss", "model", "processor", "solver", "tools", "utils")
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)]
    assert os.path.join(ROOT, "processor", "step.py") in files and len(files) > 50
    step_code = re.compile(r"\.backward\(|(optimizer|scaler)\.step\(|\.unscale_\(|clip_grad_norm_\(")
    found = [f"{os.path.relpath(path, ROOT)}:{number}" for path in files
             if path != os.path.join(ROOT, "processor", "step.py")
             for number, line in enumerate(open(path, encoding="utf-8"), start=1) if step_code.search(line)]
    assert found == []
