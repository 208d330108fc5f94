"""One optimisation step of training, :class:`TrainStep`: the only training step of the project.

``processor.trainer`` runs it for every batch; ``bench/gpu_step.py`` and ``bench/train_step.py``
time it, so every benchmark figure is a figure of the step ``train.py`` runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Mapping

import torch
from torch.nn.parallel import DistributedDataParallel

from model.build import begin_compiled_step
from processor.encoding import autocast, resolve_amp_dtype
from utils import distributed as dist_utils


@dataclasses.dataclass(frozen=True)
class StepValues:
    """What one step reports, still on the device: reading it on the host would wait for the step.

    names: "loss" (the weighted total), each loss term in the loss's order, then "acc" (accuracy of the
    appearance classifier on the batch) when the model has that classifier.
    values: (len(names),) float32 tensor on the step's device, in the order of ``names``.
    """

    names: tuple[str, ...]
    values: torch.Tensor


def _ignore_region(name: str) -> None:
    """:meth:`TrainStep.__call__` without a ``region`` callback: no part is marked."""


class TrainStep:
    """One optimisation step: autocast forward and loss, backward (loss scaled for fp16 and divided over
    the accumulated micro-batches), gradient clipping, the optimizer step and the memory update.

    Build it with :meth:`from_config` (as the trainer does) and call it once per batch. It never reads a
    tensor back to the host (bf16 / fp32; an fp16 GradScaler checks for infinities on the host), so a
    training loop that meters its values only now and then keeps the device busy.

    model: the bare model (clipped, its memory updated, its compiled regions marked per step);
    step_model: what runs the forward and backward, ``model`` itself or its DistributedDataParallel
    wrapper (whose gradient all-reduce waits for the last micro-batch of an accumulation: ``no_sync``).
    loss_fn(outputs, labels) -> (total (), {term: ()}); any model called as ``model(frames, camids,
    views, labels) -> outputs`` with that loss trains here (the benchmarks' backbone-only baseline does).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, device: torch.device, amp_dtype: torch.dtype | None = None,
                 accum_steps: int = 1, grad_clip: float = 0.0, step_model: torch.nn.Module | None = None):
        self.model = model
        self.step_model = model if step_model is None else step_model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = device
        self.amp_dtype = amp_dtype
        self.accum_steps = max(1, int(accum_steps))
        self.grad_clip = float(grad_clip)

    @classmethod
    def from_config(cls, cfg, model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, scaler: torch.amp.GradScaler | None = None,
                    step_model: torch.nn.Module | None = None) -> "TrainStep":
        """The step of ``cfg.SOLVER`` (AMP, ACCUM_STEPS, GRAD_CLIP). ``scaler``: the run's GradScaler (its
        state is checkpointed); by default a new one, enabled for fp16 only: bf16 and fp32 have the
        exponent range to go without loss scaling."""
        amp_dtype = resolve_amp_dtype(cfg.SOLVER.AMP, device)
        if scaler is None:
            scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        return cls(model, loss_fn, optimizer, scaler, device, amp_dtype=amp_dtype,
                   accum_steps=cfg.SOLVER.ACCUM_STEPS, grad_clip=cfg.SOLVER.GRAD_CLIP, step_model=step_model)

    def ends_accumulation(self, step: int, steps: int) -> bool:
        """Whether micro-batch ``step`` (1-based) of an epoch of ``steps`` steps the optimizer: every
        ``accum_steps``-th one, and the epoch's last (no gradient is carried into the next epoch)."""
        return step % self.accum_steps == 0 or step == steps

    def zero_grad(self) -> None:
        """Drop accumulated gradients (the start of an epoch)."""
        self.optimizer.zero_grad(set_to_none=True)

    def forward_loss(self, frames: torch.Tensor, camids: torch.Tensor, views: torch.Tensor, labels: torch.Tensor,
                     region: Callable[[str], None] | None = None) -> tuple[dict, torch.Tensor, dict]:
        """The step's forward under autocast: frames (B,T,3,H,W), camids (B,), views (B,), labels (B,)
        on the device -> (model outputs, total loss (), {term: ()}). ``region``: see :meth:`__call__`."""
        with autocast(self.device, self.amp_dtype):
            outputs = self.step_model(frames, camids, views, labels)
            (region or _ignore_region)("loss")
            total, terms = self.loss_fn(outputs, labels)
        return outputs, total, terms

    def __call__(self, batch: Mapping[str, torch.Tensor], optimizer_step: bool = True,
                 region: Callable[[str], None] | None = None) -> StepValues:
        """One micro-batch: forward, loss and backward; with ``optimizer_step`` (see
        :meth:`ends_accumulation`) also unscale, clip, optimizer step and zeroed gradients; then the
        memory update (the features of every rank, gathered). Returns the loss terms and accuracy on
        the device.

        batch: "frames" (B,T,3,H,W), "camids" (B,), "views" (B,), "labels" (B,), on any device.
        region(name): called where each part begins, "loss", "backward", "optimizer" and "memory
        update" (``bench/gpu_step.py`` times them; the forward is split by hooks on the backbone).
        """
        region = region or _ignore_region
        begin_compiled_step(self.model)   # a new step for CUDA graphs (MODEL.COMPILE_MODE reduce-overhead)
        frames, camids, views, labels = (batch[key].to(self.device, non_blocking=True)
                                         for key in ("frames", "camids", "views", "labels"))
        # Under DDP the gradients are all-reduced in the backward of the micro-batch that steps only.
        no_sync = isinstance(self.step_model, DistributedDataParallel) and not optimizer_step
        with self.step_model.no_sync() if no_sync else contextlib.nullcontext():
            outputs, total, terms = self.forward_loss(frames, camids, views, labels, region)
            values = self._values(outputs, total, terms, labels)
            region("backward")
            self.scaler.scale(total / self.accum_steps).backward()
        region("optimizer")
        if optimizer_step:
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)   # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        region("memory update")
        memory = getattr(self.model, "memory", None)
        if memory is not None and "memory_feat" in outputs:
            # Every rank holds the same batch size: gathered without a size exchange (no host sync).
            feats = dist_utils.all_gather_equal(outputs["memory_feat"].detach().float())
            memory.update(feats, dist_utils.all_gather_equal(labels))
        return values

    @staticmethod
    def _values(outputs: dict, total: torch.Tensor, terms: dict, labels: torch.Tensor) -> StepValues:
        """[total, terms..., accuracy] stacked into one device tensor (one transfer when read)."""
        names = ("loss", *terms)
        values = [total.detach().float(), *(value.detach().float() for value in terms.values())]
        logits = outputs.get("id_logits", {}).get("appearance")
        if logits is not None:
            names += ("acc",)
            values.append((logits.detach().argmax(1) == labels).float().mean())
        return StepValues(names, torch.stack(values))
