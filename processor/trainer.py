"""The training loop: memory rebuilds, AMP, gradient accumulation, DDP, checkpoints, logging, validation."""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections import defaultdict

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from configs import ConfigError
from datasets.build import build_dataset, build_train_loader
from loss.build import build_loss
from model.build import begin_compiled_step, build_model, check_weight_files
from processor.evaluation import run_case_evaluation, to_json
from processor.inference import autocast, encode_tracklets, resolve_amp_dtype
from solver import build_optimizer, build_scheduler
from utils import distributed as dist_utils
from utils.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from utils.fileio import remove_stale_temp_files
from utils.logger import MetricsWriter

logger = logging.getLogger(__name__)

# Loss terms summed by kind in the log line: id_* -> id, tri_* -> tri, memory -> mem, frame_id -> frame,
# shape_id + shape_prior -> shape.
LOSS_GROUPS = {"id": "id", "tri": "tri", "memory": "mem", "frame": "frame", "shape": "shape"}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the step and the loss term."""


class RunFolderError(RuntimeError):
    """A fresh run would write into an OUTPUT_DIR that holds another run; the message says what to do."""


class TrainingInterrupted(Exception):
    """Ctrl-C / SIGTERM stopped training at a step boundary; the message says how to resume."""


# ------------------------------------------------------------------ run folders
# What a training run writes into OUTPUT_DIR (evaluations of its checkpoints go to eval/).
# A run is there once it trained (checkpoints, or metrics written); config.yaml, log.txt and an empty
# metrics.jsonl alone are what a start that failed (a wrong data root, a missing weight file) leaves.
RUN_MARKERS = ("checkpoint_*.pth", "metrics.jsonl")
FAILED_START_FILES = ("config.yaml", "log.txt", "metrics.jsonl", "tensorboard")
RUN_FILES = RUN_MARKERS + FAILED_START_FILES + (".checkpoint*.tmp", "submission.csv", "test_results.json", "per_condition_case*",
                           "ranklists_case*", "eval")


def run_files(output_dir: str, patterns=RUN_FILES) -> list[str]:
    """The paths in ``output_dir`` that a training run writes (matching ``patterns``), sorted."""
    return sorted({p for pattern in patterns for p in glob.glob(os.path.join(glob.escape(output_dir), pattern))})


def check_run_folder(output_dir: str, resume: str, overwrite: bool) -> list[str]:
    """Refuse a fresh run into an OUTPUT_DIR holding a run (RunFolderError) unless ``resume`` or
    ``overwrite``; returns the files to clear first: the run's with ``overwrite``, or what a failed
    start left (config.yaml, log.txt; nothing trained) so two attempts never share a log. Read-only:
    safe on every DDP rank."""
    if resume:
        return []
    found = [p for p in run_files(output_dir, RUN_MARKERS) if not p.endswith(".jsonl") or os.path.getsize(p) > 0]
    if not found:
        return run_files(output_dir, FAILED_START_FILES)  # a failed start's files: cleared, not mixed in
    if overwrite:
        return run_files(output_dir)
    shown = ", ".join(os.path.basename(p) for p in found[:4]) + (", ..." if len(found) > 4 else "")
    raise RunFolderError(
        f"OUTPUT_DIR {output_dir} already holds a training run ({shown}). Continue it with --resume auto, "
        f"train into another folder (OUTPUT_DIR other/folder), or add --overwrite to delete that run's files first."
    )


def clear_run_files(paths) -> None:
    """Delete a previous run's (or a failed start's) files and folders (rank 0 only; the caller logs it
    once logging writes to the run's log)."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(base_seed: int, epoch: int, rank: int) -> int:
    """Every epoch starts from its own seed, so a resumed run draws exactly what a straight run does."""
    return base_seed + 1_000_003 * epoch + 7919 * rank


def check_training_settings(cfg) -> None:
    """ConfigError for settings that cannot train together (before any data is read)."""
    if cfg.MODEL.COMPILE and cfg.MODEL.COMPILE_MODE == "reduce-overhead" and cfg.SOLVER.ACCUM_STEPS > 1:
        raise ConfigError(
            f"SOLVER.ACCUM_STEPS {cfg.SOLVER.ACCUM_STEPS} cannot be used with MODEL.COMPILE_MODE reduce-overhead: "
            "its CUDA graphs reuse the memory of the gradients accumulated between optimizer steps. "
            "Set SOLVER.ACCUM_STEPS 1 or MODEL.COMPILE_MODE default.")


class Trainer:
    """Owns the model, loss, optimizer, schedule and loaders of one training run.

    Build with :meth:`from_config`; run with :meth:`fit`. Rank 0 alone logs and writes files.
    """

    def __init__(self, cfg, device: torch.device, output_dir: str, config_file: str = "", resume_hint: str = ""):
        self.cfg = cfg
        self.config_file = config_file  # stored in checkpoints: evaluation says what a model was trained with
        self.resume_hint = resume_hint  # the command that continues this run, printed when it is interrupted
        self.device = device
        self.output_dir = output_dir
        self.rank = dist_utils.get_rank()
        self.world_size = dist_utils.get_world_size()
        self.is_main = self.rank == 0

        check_weight_files(cfg)  # a missing weight file fails now, not after the dataset scan
        check_training_settings(cfg)
        seed_everything(cfg.SOLVER.SEED)
        self.dataset = build_dataset(cfg)  # logs its statistics table
        self.num_classes = self.dataset.num_train_pids
        self.num_cameras = self.dataset.num_cameras
        self.train_loader = build_train_loader(cfg, self.dataset, rank=self.rank, world_size=self.world_size)

        self.model = build_model(cfg, num_classes=self.num_classes, num_cameras=self.num_cameras).to(device)
        if self.world_size > 1 and cfg.SOLVER.SYNC_BN:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.loss_fn = build_loss(cfg, self.num_classes, self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.amp_dtype = resolve_amp_dtype(cfg.SOLVER.AMP, device)
        # Loss scaling only for fp16; bf16 and fp32 have the exponent range to go without.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        self.step_model = self.model
        if self.world_size > 1:
            # A term with weight 0 leaves its head without gradients; DDP must then look for unused ones.
            loss_weights = [v for k, v in cfg.LOSS.items() if k.endswith("_WEIGHT")]
            self.step_model = DistributedDataParallel(
                self.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=any(w == 0 for w in loss_weights),
            )

        self.start_epoch = 1
        self.global_step = 0
        self.best_map = -1.0
        if self.is_main:  # temporary files of a killed earlier run in this folder (plots, CSV, checkpoints)
            remove_stale_temp_files(output_dir)
        self.best_epoch = None
        self.last_val_summary = self.best_val_summary = self.final_val_summary = None  # rank 0 only
        self.weights_label = "the last weights"  # what the model holds when test evaluation runs
        self.stop_signal: int | None = None
        self.writer = MetricsWriter(output_dir, enabled=self.is_main)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "best_map": self.best_map,
            "best_epoch": self.best_epoch,
            # JSON text (weights_only loading): a resumed run still reports its best epoch's validation.
            "best_val_summary": None if self.best_val_summary is None else to_json(self.best_val_summary),
            "rng": rng_state(),
            "config": self.cfg.dump(),
            "meta": {"num_classes": self.num_classes, "num_cameras": self.num_cameras,
                     "camera_index": dict(self.dataset.camera_index),
                     "config_file": self.config_file},
        }

    def save(self, epoch: int) -> None:
        if not self.is_main:
            return
        state = self.state_dict(epoch)
        save_checkpoint(state, os.path.join(self.output_dir, LAST_NAME))
        if epoch % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0 or epoch == self.cfg.SOLVER.MAX_EPOCHS:
            save_checkpoint(state, os.path.join(self.output_dir, f"checkpoint_epoch{epoch}.pth"))

    def resume(self, resume: str) -> bool:
        """Restore from ``resume`` ("auto" = newest loadable checkpoint in OUTPUT_DIR, or a path)."""
        if resume == "auto":
            found = find_resume_checkpoint(self.output_dir)
            if found is None:
                logger.info("No checkpoint in %s: starting from scratch", self.output_dir)
                return False
            path, state = found
        else:
            path, state = resume, load_checkpoint(resume)
        load_model_state(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        self.best_map = float(state["best_map"])
        self.best_epoch = state.get("best_epoch")
        if state.get("best_val_summary"):
            self.best_val_summary = json.loads(state["best_val_summary"])
        set_rng_state(state["rng"])
        logger.info("Resumed from %s (epoch %d done)", path, state["epoch"])
        return True

    # ------------------------------------------------------------------ memory
    @torch.no_grad()
    def rebuild_memory(self) -> None:
        """Proxies <- class centroids of the whole training set (eval mode, no grad).

        Every training tracklet is encoded from DATALOADER.SEQ_LEN evenly spaced frames (deterministic),
        whatever TEST.SAMPLING / TEST.SEQ_LEN say (as the authors): the proxies describe training-length
        clips, and dense test sampling would encode every training frame each epoch. Each rank encodes
        its share of the training tracklets; features are gathered to all ranks. Logs the time it took.
        """
        memory = self.model.memory
        if memory is None:
            return
        start = time.perf_counter()
        rebuild_cfg = self.cfg.clone()
        rebuild_cfg.defrost()
        rebuild_cfg.TEST.SAMPLING = "even"
        rebuild_cfg.TEST.SEQ_LEN = int(self.cfg.DATALOADER.SEQ_LEN)
        rebuild_cfg.freeze()
        share = self.dataset.train[self.rank :: self.world_size]
        feats = encode_tracklets(self.model, rebuild_cfg, share, self.device, outputs=("memory_feat",), desc="memory")
        labels = torch.tensor([t.label for t in share], dtype=torch.long)
        feats = dist_utils.all_gather_tensor(feats["memory_feat"].to(self.device))
        labels = dist_utils.all_gather_tensor(labels.to(self.device))
        memory.rebuild(feats, labels)
        logger.debug("Memory rebuilt from %d training tracklets (%d evenly spaced frames each) in %.1fs",
                    len(self.dataset.train), rebuild_cfg.TEST.SEQ_LEN, time.perf_counter() - start)

    # ------------------------------------------------------------------ validation
    def validate(self, tag: str) -> float | None:
        """Val-split evaluation on rank 0 (never the test set); returns pooled mAP (%) or None."""
        if not self.dataset.val:
            return None
        value = None
        if self.is_main:
            summary = run_case_evaluation(
                self.cfg, self.model, self.dataset.val, self.device, self.output_dir, condition_report=False,
                verbose=False,
            )
            value = summary.get("mAP-3")
            self.last_val_summary = summary
            per_case = " ".join(f"{c}:{e['mAP']:.1f}" for c, e in sorted(summary["cases"].items()) if "mAP" in e)
            logger.info("val (%s): mAP-3 %.2f R1 %.2f (per case mAP %s)", tag,
                        value if value is not None else float("nan"), summary.get("mean_R1", float("nan")), per_case)
        dist_utils.barrier()
        return dist_utils.broadcast_object(value)

    # ------------------------------------------------------------------ training
    def _flush_step_values(self, pending: list, names: list, meters: dict, epoch: int, step: int) -> None:
        """Move the per-step values gathered on the device since the last flush to ``meters`` with one
        transfer, and stop on a non-finite loss (naming the first bad step and term).

        pending: one (len(names),) device tensor per step, steps ``step - len(pending) + 1 .. step``;
        names: "loss" (the total), the loss terms, then optionally "acc". Called on log steps only, so
        a training step never waits for the host; every rank calls it at the same steps.
        """
        if not pending:
            return
        rows = torch.stack(pending)  # (S, K)
        loss_columns = len(names) - (1 if names[-1] == "acc" else 0)
        bad = (~torch.isfinite(rows[:, :loss_columns])).any().float().view(1)
        if self.world_size > 1:  # every rank must stop together, or the others hang in all-reduce
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        values = torch.cat([rows.flatten().float(), bad]).cpu()  # the one device -> host transfer
        rows_host, any_bad = values[:-1].view(rows.shape), bool(values[-1])
        pending.clear()
        first_step = step - rows_host.shape[0] + 1
        for row in rows_host.tolist():
            for name, value in zip(names, row):
                meters[name].append(value)
        if any_bad:
            self._raise_non_finite(rows_host[:, :loss_columns], names[:loss_columns], epoch, first_step, step)

    def _raise_non_finite(self, rows: torch.Tensor, names: list, epoch: int, first_step: int, step: int) -> None:
        """rows (S, K) host values of [total, terms...] for steps first_step..step; raise for the first bad one."""
        finite = torch.isfinite(rows)
        bad_rows = (~finite).any(dim=1).nonzero().flatten().tolist()  # host tensors: no device sync
        if bad_rows:
            index = bad_rows[0]
            row = dict(zip(names, rows[index].tolist()))
            total = row.pop("loss")
            culprits = [name for name, value in row.items() if not math.isfinite(value)]
            if culprits:
                where = ", ".join(culprits)
            else:
                # Every term is finite here but their sum is not: it overflowed (a huge weight, fp16).
                largest = sorted(row.items(), key=lambda item: -abs(item[1]))[:3]
                listed = ", ".join(f"{name} {value:.3g}" for name, value in largest)
                where = (f"the total ({total}), whose finite terms overflow when summed (largest: {listed}; "
                         "check LOSS.*_WEIGHT)")
        else:
            index, where = rows.shape[0] - 1, "total (on another rank)"
        bad_step = first_step + index
        raise NonFiniteLossError(
            f"Non-finite loss at epoch {epoch}, step {bad_step} (global step {self.global_step - (step - bad_step)}) "
            f"in term(s): {where}. Training stopped at step {step}, before any checkpoint of this epoch; the last "
            f"good checkpoint in {self.output_dir} is intact. "
            "Lower the learning rate, enable SOLVER.GRAD_CLIP, or set SOLVER.AMP off to investigate."
        )

    def train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        seed_everything(epoch_seed(cfg.SOLVER.SEED, epoch, self.rank))
        self.train_loader.batch_sampler.set_epoch(epoch)
        if self.model.memory is not None and (epoch - 1) % cfg.MODEL.MEMORY.REBUILD_PERIOD == 0:
            self.rebuild_memory()
        self.step_model.train()
        accum = max(1, cfg.SOLVER.ACCUM_STEPS)
        meters: dict[str, list[float]] = defaultdict(list)
        steps = len(self.train_loader)
        window_start, window_clips = time.perf_counter(), 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        epoch_start, epoch_clips = time.perf_counter(), 0
        progress = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, disable=not self.is_main)
        pending: list[torch.Tensor] = []  # per-step [loss, terms..., acc] on the device, until a log step
        pending_names: list[str] = []
        for step, batch in enumerate(self._interruptible(progress, epoch), start=1):
            begin_compiled_step(self.model)
            frames = batch["frames"].to(self.device, non_blocking=True)
            labels = batch["labels"].to(self.device, non_blocking=True)
            camids = batch["camids"].to(self.device, non_blocking=True)
            views = batch["views"].to(self.device, non_blocking=True)
            boundary = step % accum == 0 or step == steps
            sync_context = (
                self.step_model.no_sync() if isinstance(self.step_model, DistributedDataParallel) and not boundary
                else contextlib.nullcontext()
            )
            with sync_context:
                with autocast(self.device, self.amp_dtype):
                    outputs = self.step_model(frames, camids, views, labels)
                    total, terms = self.loss_fn(outputs, labels)
                self.scaler.scale(total / accum).backward()
            if boundary:
                if cfg.SOLVER.GRAD_CLIP > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.SOLVER.GRAD_CLIP)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
            if self.model.memory is not None and "memory_feat" in outputs:
                # Every rank holds the same batch size: gathered without a size exchange (no host sync).
                feats = dist_utils.all_gather_equal(outputs["memory_feat"].detach().float())
                self.model.memory.update(feats, dist_utils.all_gather_equal(labels))
            self.global_step += 1
            # The loss, its terms and the accuracy stay on the device until a log step (no host sync).
            names = ["loss", *terms]
            values = [total.detach().float(), *(value.detach().float() for value in terms.values())]
            if "appearance" in outputs.get("id_logits", {}):
                names.append("acc")
                values.append((outputs["id_logits"]["appearance"].argmax(1) == labels).float().mean())
            if names != pending_names:
                self._flush_step_values(pending, pending_names, meters, epoch, step - 1)
                pending_names = names
            pending.append(torch.stack(values))
            window_clips += frames.shape[0] * self.world_size
            epoch_clips += frames.shape[0] * self.world_size
            log_step = step % cfg.SOLVER.LOG_PERIOD == 0 or step == steps
            if log_step:  # one device-to-host transfer of the pending loss terms
                self._flush_step_values(pending, pending_names, meters, epoch, step)
            # A step line only where an epoch is longer than LOG_PERIOD steps: the epoch line covers the rest.
            if steps > cfg.SOLVER.LOG_PERIOD and step % cfg.SOLVER.LOG_PERIOD == 0 and step < steps:
                self._log_step(epoch, step, steps, meters, window_clips / (time.perf_counter() - window_start))
                window_start, window_clips = time.perf_counter(), 0
            # Under DDP the stop flag is all-reduced (a host sync), so only on log steps. Never at an epoch's
            # last step: that epoch is finished and saved first, and the check before the next one stops.
            if boundary and step < steps and (self.world_size == 1 or log_step) and self._stop_requested():
                raise TrainingInterrupted(self._interrupt_message(epoch, step))
        self.last_clips_per_s = epoch_clips / max(time.perf_counter() - epoch_start, 1e-9)
        self.writer.write("train", self.global_step, epoch,
                          {**{k: float(np.mean(v)) for k, v in meters.items()}, **self._learning_rates(),
                           "clips_per_s": self.last_clips_per_s})
        self.epoch_lr_text = self._format_lr()  # the rates this epoch trained with, before the schedule moves on
        self.scheduler.step()
        skipped = getattr(self.train_loader.dataset, "skipped_frames", 0)
        if skipped:
            logger.warning("Skipped %d unreadable training frames so far (DATASETS.SKIP_CORRUPT_FRAMES)", skipped)
        return {k: float(np.mean(v)) for k, v in meters.items()}

    def _learning_rates(self) -> dict:
        """The scheduled learning rates: ``lr`` (base, the heads) and ``lr_backbone`` (the CLIP encoder).

        The schedule scales every parameter group by the same factor; biases and the temporal
        classifiers run at fixed multiples of these (SOLVER.BIAS_LR_FACTOR, HEAD_LR_FACTOR).
        """
        group = self.optimizer.param_groups[0]
        factor = group["lr"] / group["initial_lr"] if group.get("initial_lr") else 1.0
        return {"lr": self.cfg.SOLVER.BASE_LR * factor, "lr_backbone": self.cfg.SOLVER.BACKBONE_LR * factor}

    def _format_terms(self, means: dict) -> str:
        """'loss 6.95 | id 0.52 tri 2.10 mem 3.22 frame 0.28 shape 0.11 | acc 0.49': loss terms summed
        by kind (every term on its own is in metrics.jsonl and TensorBoard)."""
        groups: dict[str, float] = {}
        for name, value in means.items():
            if name in ("loss", "acc"):
                continue
            kind = LOSS_GROUPS.get(name.split("_")[0], name)
            groups[kind] = groups.get(kind, 0.0) + value
        text = f"loss {means.get('loss', float('nan')):.3f} | " + " ".join(f"{k} {v:.3f}" for k, v in groups.items())
        if "acc" in means:
            text += f" | acc {means['acc']:.2f}"
        return text

    def _format_lr(self) -> str:
        rates = self._learning_rates()
        return f"lr base {rates['lr']:.1e} backbone {rates['lr_backbone']:.1e}"

    def _log_step(self, epoch: int, step: int, steps: int, meters: dict, clips_per_s: float) -> None:
        recent = {k: float(np.mean(v[-self.cfg.SOLVER.LOG_PERIOD:])) for k, v in meters.items()}
        scalars = {**recent, **self._learning_rates(), "clips_per_s": clips_per_s}
        mem = ""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
            scalars["peak_mem_gib"] = peak
            mem = f", {peak:.1f} GiB"
        logger.info("epoch %d [%d/%d] %s | %s | %.1f clips/s%s", epoch, step, steps, self._format_terms(recent),
                    self._format_lr(), clips_per_s, mem)
        self.writer.write("train", self.global_step, epoch, scalars)

    # ------------------------------------------------------------------ interrupts
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        """First Ctrl-C / SIGTERM: stop at the next step boundary; a second one stops at once."""
        self.stop_signal = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        if self.is_main:
            logger.warning("%s: stopping at the next step boundary (press Ctrl-C again to stop at once)",
                           signal.Signals(signum).name)

    @contextlib.contextmanager
    def _signal_handlers(self):
        """Ctrl-C / SIGTERM set a flag that the step loop reads (main thread only: signals go there)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_requested(self) -> bool:
        if self.world_size == 1:  # a plain flag: no device sync per step
            return self.stop_signal is not None
        # All ranks stop at the same step, or the others hang in the next all-reduce.
        flag = torch.tensor(float(self.stop_signal is not None), device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _interruptible(self, batches, epoch: int):
        """The loader's batches; a loader worker killed by the same Ctrl-C counts as the interrupt."""
        iterator = iter(batches)
        step = 0
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError:
                if self.stop_signal is None:
                    raise
                raise TrainingInterrupted(self._interrupt_message(epoch, step)) from None
            step += 1
            yield batch

    def _interrupt_message(self, epoch: int, step: int) -> str:
        """One line: where training stopped, which checkpoint is kept, the command that continues it."""
        last = os.path.join(self.output_dir, LAST_NAME)
        where = f"Interrupted at epoch {epoch}, step {step}"
        if epoch > self.start_epoch or os.path.isfile(last):
            kept = f"{last} (epoch {epoch - 1}) is kept"
            return f"{where}: {kept}; resume with: {self.resume_hint or 'train.py ... --resume auto'}"
        return f"{where}, before the first checkpoint: nothing to resume; start again with --overwrite"

    def fit(self) -> dict:
        """Train from ``start_epoch`` to SOLVER.MAX_EPOCHS; returns validation mAPs before/after.

        Ctrl-C / SIGTERM stop training at the next step boundary with TrainingInterrupted; the
        checkpoint of the last finished epoch is kept (a half epoch is not saved: resuming from one
        would not give the weights of a straight run).
        """
        with self._signal_handlers():
            return self._fit()

    def _fit(self) -> dict:
        cfg = self.cfg
        report: dict = {}
        eval_period = cfg.SOLVER.EVAL_PERIOD
        if self.start_epoch == 1 and eval_period > 0:
            report["val_mAP_before"] = self.validate("before training")
        for epoch in range(self.start_epoch, cfg.SOLVER.MAX_EPOCHS + 1):
            if self._stop_requested():
                raise TrainingInterrupted(self._interrupt_message(epoch, 0))
            start = time.perf_counter()
            means = self.train_epoch(epoch)
            logger.info("epoch %d done in %.1f s (of %d): %s | %s | %.1f clips/s", epoch, time.perf_counter() - start,
                        cfg.SOLVER.MAX_EPOCHS, self._format_terms(means), self.epoch_lr_text, self.last_clips_per_s)
            self.writer.write("epoch", self.global_step, epoch, means)
            if eval_period > 0 and (epoch % eval_period == 0 or epoch == cfg.SOLVER.MAX_EPOCHS):
                value = self.validate(f"epoch {epoch}")
                if value is not None:
                    self.writer.write("val", self.global_step, epoch, {"mAP": value})
                    report["val_mAP_after"] = value
                    if value > self.best_map:
                        self.best_map, self.best_epoch = value, epoch
                        self.best_val_summary = self.last_val_summary
                        logger.info("new best (epoch %d, val mAP-3 %.2f): %s", epoch, value, BEST_NAME)
                        if self.is_main:
                            save_checkpoint(self.state_dict(epoch), os.path.join(self.output_dir, BEST_NAME))
            self.save(epoch)
            dist_utils.barrier()
        report["best_val_mAP"] = self.best_map if self.best_map >= 0 else None
        report["best_epoch"] = self.best_epoch
        return report

    def use_final_weights(self) -> dict:
        """Load the weights the end-of-training evaluation uses: checkpoint_best.pth when the run has a
        validation split and TEST.FINAL_WEIGHTS is "best", else the last weights (already in the model).

        Returns {"checkpoint": path or "last weights", "epoch": N} for the results JSON; logs which.
        """
        choice = str(self.cfg.TEST.FINAL_WEIGHTS).lower()
        if choice not in ("best", "last"):
            raise ValueError(f"TEST.FINAL_WEIGHTS must be best or last, got {self.cfg.TEST.FINAL_WEIGHTS!r}")
        best_path = os.path.join(self.output_dir, BEST_NAME)
        last_epoch = self.cfg.SOLVER.MAX_EPOCHS
        if choice == "best" and self.dataset.val and os.path.isfile(best_path):
            dist_utils.barrier()  # rank 0 wrote it
            state = load_checkpoint(best_path)
            load_model_state(self.model, state["model"], best_path)
            self.weights_label = f"{BEST_NAME} (epoch {state['epoch']}, val mAP-3 {state['best_map']:.2f})"
            chosen = {"checkpoint": best_path, "epoch": int(state["epoch"])}
            self.final_val_summary = self.best_val_summary
        else:
            if choice == "last":
                reason = "TEST.FINAL_WEIGHTS last"
            elif not self.dataset.val:
                reason = "no validation split (DATASETS.VAL_IDS 0)"
            elif self.cfg.SOLVER.EVAL_PERIOD <= 0:
                reason = "no validation during training (SOLVER.EVAL_PERIOD 0)"
            else:
                reason = f"no {BEST_NAME} in {self.output_dir}"
            self.weights_label = f"the last weights (epoch {last_epoch}; {reason})"
            chosen = {"checkpoint": os.path.join(self.output_dir, LAST_NAME), "epoch": last_epoch}
            self.final_val_summary = self.last_val_summary
        logger.info("%s %s", "Final evaluation with" if self.cfg.TEST.EVAL_AFTER_TRAINING else "Final weights:",
                    self.weights_label)
        return chosen

    def evaluate_test(self, chosen: dict | None = None) -> dict | None:
        """After training: the test cases on disk, with the submission CSV (rank 0), scored with the
        weights the model holds (see :meth:`use_final_weights`, whose dict ``chosen`` goes to the JSON)."""
        if not self.dataset.cases or not self.is_main:
            return None
        cases = {c: s for c, s in self.dataset.cases.items() if c in self.cfg.TEST.CASES}
        return run_case_evaluation(
            self.cfg, self.model, cases, self.device, self.output_dir,
            csv_path=os.path.join(self.output_dir, "submission.csv"),
            json_path=os.path.join(self.output_dir, "test_results.json"),
            extra=chosen, title=f"Test results ({self.weights_label})",
        )

    def close(self) -> None:
        self.writer.close()

