"""The training loop around :class:`processor.step.TrainStep` (which owns the optimisation step: AMP,
accumulation, clipping, DDP): epochs, memory rebuilds, metering and logging, checkpoints and resume,
validation, the final test evaluation, and stopping at a step boundary on a signal."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from configs import ConfigError
from datasets.build import build_dataset, build_train_loader
from datasets.video import CorruptFrameError, read_frame
from loss.build import build_loss
from model.build import build_model, check_weight_files
from processor.evaluation import run_case_evaluation, to_json
from processor.encoding import encode_tracklets
from processor.run_folder import metrics_written
from processor.step import StepValues, TrainStep
from solver.optimizer import build_optimizer
from solver.scheduler import build_scheduler
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
from utils.logger import DETAIL_LOGGERS, MetricsWriter, progress_bar, quieter
from utils import signals
from utils.signals import RunInterrupted

logger = logging.getLogger(__name__)

# Loss terms summed by kind in the log line: id_* -> id, tri_* -> tri, memory -> mem, frame_id -> frame,
# shape_id + shape_prior -> shape.
LOSS_GROUPS = {"id": "id", "tri": "tri", "memory": "mem", "frame": "frame", "shape": "shape"}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the step and the loss term."""


class TrainingInterrupted(RunInterrupted):
    """Ctrl-C / SIGTERM / SIGUSR1 stopped training at a step boundary; the message says how to resume."""


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


_NOT_LOOKED_UP = object()   # Trainer.resume: no checkpoint was looked up for it yet


def _first_line(exc: BaseException) -> str:
    """An exception's message without the traceback a loader worker's copy of it carries."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):   # a worker's error: "Caught X in DataLoader worker ...\nTraceback...\nX: msg"
        if line.startswith(type(exc).__name__ + ": "):
            return line[len(type(exc).__name__) + 2:]
    return lines[0] if lines else type(exc).__name__


def unreadable_tracklets(tracklets) -> list[str]:
    """Folders of the ``tracklets`` of which no frame decodes (one decode per readable tracklet)."""
    bad = []
    for tracklet in tracklets:
        for path in tracklet.frames:
            try:
                read_frame(path)
            except CorruptFrameError:
                continue
            break
        else:
            bad.append(tracklet.folder)
    return sorted(bad)


def _count_unique(cases) -> int:
    """Distinct tracklets over the cases (those used by two cases are encoded once)."""
    return len({(t.pid, t.name, t.frames) for split in (cases or {}).values()
                for t in (*split.query, *split.gallery)})


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _clock_text(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunClock:
    """Elapsed time of a training run and an estimate of the time left for all of it: the epochs left
    (mean epoch time so far), their validations (the last validation's time) and the final test
    evaluation (the last validation's time per tracklet, times the test tracklets)."""

    def __init__(self, max_epochs: int, is_eval_epoch, final_tracklets: int = 0, clock=time.perf_counter):
        self.max_epochs = max_epochs
        self.is_eval_epoch = is_eval_epoch
        self.final_tracklets = final_tracklets
        self.clock = clock
        self.start = clock()
        self.epoch_seconds: list[float] = []
        self.validation_seconds: float | None = None
        self.seconds_per_tracklet: float | None = None

    def epoch_done(self, seconds: float) -> None:
        self.epoch_seconds.append(seconds)

    def validation_done(self, seconds: float, tracklets: int) -> None:
        self.validation_seconds = seconds
        if tracklets:
            self.seconds_per_tracklet = seconds / tracklets

    def seconds_left(self, epoch: int) -> tuple[float, list[str]]:
        """(estimated seconds left after ``epoch``'s training, parts that could not be estimated yet)."""
        unknown = []
        left = 0.0
        if self.epoch_seconds:
            left += sum(self.epoch_seconds) / len(self.epoch_seconds) * (self.max_epochs - epoch)
        validations = sum(1 for e in range(epoch, self.max_epochs + 1) if self.is_eval_epoch(e))
        if validations:
            if self.validation_seconds is None:
                unknown.append("validation")
            else:
                left += validations * self.validation_seconds
        if self.final_tracklets:
            if self.seconds_per_tracklet is None:
                unknown.append("the final evaluation")
            else:
                left += self.final_tracklets * self.seconds_per_tracklet
        return left, unknown

    def describe(self, epoch: int) -> str:
        """'elapsed 0:01:10, about 0:07:30 left' (+ what is not estimated yet)."""
        left, unknown = self.seconds_left(epoch)
        text = f"elapsed {_clock_text(self.clock() - self.start)}, about {_clock_text(left)} left"
        return text + (f" + {' and '.join(unknown)}" if unknown else "")


class Trainer:
    """Owns the model, loss, optimizer, schedule and loaders of one training run.

    Build with :meth:`from_config`; run with :meth:`fit`. Rank 0 alone logs and writes files.
    """

    def __init__(self, cfg, device: torch.device, output_dir: str, config_file: str = "", resume_hint: str = "",
                 dataset_table: bool = True):
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
        with quieter(DETAIL_LOGGERS, enabled=not dataset_table):
            self.dataset = build_dataset(cfg)  # logs its statistics table (dataset_table False: not again)
        self.num_classes = self.dataset.num_train_pids
        self.num_cameras = self.dataset.num_cameras
        self.train_loader = build_train_loader(cfg, self.dataset, rank=self.rank, world_size=self.world_size)

        self.model = build_model(cfg, num_classes=self.num_classes, num_cameras=self.num_cameras).to(device)
        if self.world_size > 1 and cfg.SOLVER.SYNC_BN:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.loss_fn = build_loss(cfg, self.num_classes, self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)

        self.step_model = self.model
        if self.world_size > 1:
            # A term with weight 0 leaves its head without gradients; DDP must then look for unused ones.
            loss_weights = [v for k, v in cfg.LOSS.items() if k.endswith("_WEIGHT")]
            self.step_model = DistributedDataParallel(
                self.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=any(w == 0 for w in loss_weights),
            )
        self.train_step = TrainStep.from_config(cfg, self.model, self.loss_fn, self.optimizer, device,
                                                step_model=self.step_model)
        self.scaler = self.train_step.scaler   # fp16 loss scaling; its state is checkpointed

        self.start_epoch = 1
        self.global_step = 0
        self.best_map = -1.0
        if self.is_main:  # temporary files of a killed earlier run in this folder (plots, CSV, checkpoints)
            remove_stale_temp_files(output_dir)
        self.best_epoch = None
        self.last_val_summary = self.best_val_summary = self.final_val_summary = None  # rank 0 only
        self.weights_label = "the last weights"  # what the model holds when test evaluation runs
        self.validation_pending: int | None = None   # an epoch whose validation an interrupt cut short
        self.clock = RunClock(cfg.SOLVER.MAX_EPOCHS, self._is_eval_epoch,
                              _count_unique(self.dataset.cases) if cfg.TEST.EVAL_AFTER_TRAINING else 0)
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

    def save(self, epoch: int, validation_pending: bool = False) -> None:
        """checkpoint_last.pth, and checkpoint_epoch<N>.pth every SOLVER.CHECKPOINT_PERIOD epochs (rank 0).
        ``validation_pending``: the epoch's validation was interrupted; a resumed run validates it first."""
        if not self.is_main:
            return
        state = self.state_dict(epoch)
        if validation_pending:
            state["validation_pending"] = True
        save_checkpoint(state, os.path.join(self.output_dir, LAST_NAME))
        if epoch % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0 or epoch == self.cfg.SOLVER.MAX_EPOCHS:
            save_checkpoint(state, os.path.join(self.output_dir, f"checkpoint_epoch{epoch}.pth"))

    def resume(self, resume: str, found=_NOT_LOOKED_UP) -> bool:
        """Restore from ``resume`` ("auto" = newest loadable checkpoint in OUTPUT_DIR, or a path);
        ``found``: the (path, state) already loaded for it (None: auto found nothing)."""
        if found is _NOT_LOOKED_UP:
            found = find_resume_checkpoint(self.output_dir) if resume == "auto" else (resume, load_checkpoint(resume))
        if found is None:
            logger.info("No checkpoint in %s: starting from scratch", self.output_dir)
            return False
        path, state = found
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
        if state.get("validation_pending"):
            self.validation_pending = int(state["epoch"])
        logger.info("Resumed from %s (epoch %d done)", path, state["epoch"])
        return True

    # ------------------------------------------------------------------ memory
    @torch.no_grad()
    def rebuild_memory(self) -> None:
        """Proxies <- class centroids of the whole training set (no grad; MODEL.MEMORY.REBUILD_*).

        Every training tracklet is encoded from DATALOADER.SEQ_LEN frames chosen by
        MODEL.MEMORY.REBUILD_SAMPLING (deterministic), whatever TEST.SAMPLING / TEST.SEQ_LEN say: the
        proxies describe training-length clips. The defaults follow the authors: clips encoded without
        SIE (REBUILD_SIE False), the BNNecks standardising with the statistics of the clips themselves
        (REBUILD_BN "batch": as a BatchNorm in train mode, here over the whole training set at once,
        without touching the running statistics; at epoch 1 the running statistics are still their
        initial values, which would leave the proxies unstandardised while the training features are
        batch-standardised), and the class mean taken over the BN features without normalising each
        clip first (REBUILD_NORMALIZE_CLIPS False). Each rank encodes its share of the training
        tracklets; features are gathered to all ranks. Logs the time it took.
        """
        memory = self.model.memory
        if memory is None:
            return
        start = time.perf_counter()
        mem_cfg = self.cfg.MODEL.MEMORY
        rebuild_cfg = self.cfg.clone()
        rebuild_cfg.defrost()
        rebuild_cfg.TEST.SAMPLING = str(mem_cfg.REBUILD_SAMPLING)
        rebuild_cfg.TEST.SEQ_LEN = int(self.cfg.DATALOADER.SEQ_LEN)
        rebuild_cfg.freeze()
        share = self.dataset.train[self.rank :: self.world_size]
        side_info = contextlib.nullcontext() if mem_cfg.REBUILD_SIE else self.model.without_side_info()
        with side_info:
            feats = encode_tracklets(self.model, rebuild_cfg, share, self.device, outputs=("appearance",),
                                     desc="memory")
        labels = torch.tensor([t.label for t in share], dtype=torch.long)
        appearance = dist_utils.all_gather_tensor(feats["appearance"].to(self.device))
        labels = dist_utils.all_gather_tensor(labels.to(self.device))
        feats = self.model.appearance_bnneck(appearance, batch_statistics=mem_cfg.REBUILD_BN == "batch")
        if mem_cfg.REBUILD_NORMALIZE_CLIPS:
            feats = F.normalize(feats, dim=1)
        memory.rebuild(feats, labels)
        logger.debug("Memory rebuilt from %d training tracklets (%d frames each, %s sampling) in %.1fs",
                     len(self.dataset.train), rebuild_cfg.TEST.SEQ_LEN, rebuild_cfg.TEST.SAMPLING,
                     time.perf_counter() - start)

    # ------------------------------------------------------------------ validation
    def validate(self, tag: str) -> float | None:
        """Val-split evaluation on rank 0 (never the test set); returns pooled mAP (%) or None."""
        if not self.dataset.val:
            return None
        value = None
        if self.is_main:
            start = time.perf_counter()
            summary = run_case_evaluation(
                self.cfg, self.model, self.dataset.val, self.device, self.output_dir, condition_report=False,
                verbose=False,
            )
            value = summary.get("mAP-3")
            self.last_val_summary = summary
            self.clock.validation_done(time.perf_counter() - start, summary.get("num_unique_tracklets", 0))
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
        """Train one epoch: the memory rebuild when it is due (MODEL.MEMORY.REBUILD_PERIOD), then one
        :class:`~processor.step.TrainStep` per batch (the optimizer steps every SOLVER.ACCUM_STEPS
        batches and at the epoch's last), then the scheduler's step.

        Metering never makes a step wait: the step values stay on the device until a log step (every
        SOLVER.LOG_PERIOD steps, and the last), which moves them to the host in one transfer and stops
        a non-finite loss (NonFiniteLossError). An epoch longer than LOG_PERIOD steps logs a step line
        and writes a "window" record at each log step before its last. A stop signal ends the epoch
        at the next optimizer step with TrainingInterrupted (never at its last step: a finished epoch
        is saved first). Returns the epoch's means ("loss", each loss term, "acc"); its clips/s and
        learning rates are left in ``last_clips_per_s`` and ``epoch_lrs``.
        """
        self._begin_epoch(epoch)
        log_period, steps = self.cfg.SOLVER.LOG_PERIOD, len(self.train_loader)
        meters: dict[str, list[float]] = defaultdict(list)
        pending: list[torch.Tensor] = []   # per-step StepValues.values (device), until a log step
        pending_names: tuple[str, ...] = ()
        epoch_start = window_start = time.perf_counter()
        epoch_clips = window_clips = 0
        batches = signals.loader_deaths_as_stops(
            progress_bar(self.train_loader, desc=f"epoch {epoch}", enabled=self.is_main),
            lambda done: TrainingInterrupted(self._interrupt_message(epoch, done)))
        for step, batch in enumerate(batches, start=1):
            optimizer_step = self.train_step.ends_accumulation(step, steps)
            result: StepValues = self.train_step(batch, optimizer_step)
            self.global_step += 1
            if result.names != pending_names:   # a term appeared or left: flush the steps before it
                self._flush_step_values(pending, pending_names, meters, epoch, step - 1)
                pending_names = result.names
            pending.append(result.values)
            clips = batch["frames"].shape[0] * self.world_size
            epoch_clips, window_clips = epoch_clips + clips, window_clips + clips
            log_step = step % log_period == 0 or step == steps
            if log_step:   # the one device-to-host transfer of the steps since the last log step
                self._flush_step_values(pending, pending_names, meters, epoch, step)
            if log_step and step < steps:   # a step line while the epoch goes on; its end has the epoch line
                self._log_window(epoch, step, steps, meters, window_clips / (time.perf_counter() - window_start))
                window_start, window_clips = time.perf_counter(), 0
            # Stop where no gradient is half-accumulated, never at the epoch's last step (that epoch is saved
            # first; the check before the next one stops). Under DDP asking the other ranks is a host sync:
            # on log steps only.
            if (optimizer_step and step < steps and (self.world_size == 1 or log_step)
                    and signals.stop_requested_on_any_rank(self.device)):
                raise TrainingInterrupted(self._interrupt_message(epoch, step))
        self.last_clips_per_s = epoch_clips / max(time.perf_counter() - epoch_start, 1e-9)
        self.epoch_lrs = self._learning_rates()   # the rates this epoch trained with, before the schedule moves on
        self.scheduler.step()
        skipped = getattr(self.train_loader.dataset, "skipped_frames", 0)
        if skipped:
            logger.warning("Skipped %d unreadable training frames so far (DATASETS.SKIP_CORRUPT_FRAMES)", skipped)
        return {k: float(np.mean(v)) for k, v in meters.items()}

    def _begin_epoch(self, epoch: int) -> None:
        """The epoch's seed and sampler order, the memory rebuild when due, train mode, no gradients."""
        cfg = self.cfg
        seed_everything(epoch_seed(cfg.SOLVER.SEED, epoch, self.rank))
        self.train_loader.batch_sampler.set_epoch(epoch)
        if self.model.memory is not None and (epoch - 1) % cfg.MODEL.MEMORY.REBUILD_PERIOD == 0:
            try:
                self.rebuild_memory()
            except RunInterrupted:   # its loader is a step boundary
                raise TrainingInterrupted(self._interrupt_message(epoch, 0, during="the memory rebuild")) from None
        self.step_model.train()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.train_step.zero_grad()

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

    @staticmethod
    def _format_lr(rates: dict) -> str:
        return f"lr base {rates['lr']:.1e} backbone {rates['lr_backbone']:.1e}"

    def _log_window(self, epoch: int, step: int, steps: int, meters: dict, clips_per_s: float) -> None:
        """The step line and the "window" record: means over the last SOLVER.LOG_PERIOD steps."""
        recent = {k: float(np.mean(v[-self.cfg.SOLVER.LOG_PERIOD:])) for k, v in meters.items()}
        rates = self._learning_rates()
        scalars = {**recent, **rates, "clips_per_s": clips_per_s}
        mem = ""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
            scalars["peak_mem_gib"] = peak
            mem = f", {peak:.1f} GiB"
        logger.info("epoch %d [%d/%d] %s | %s | %.1f clips/s%s", epoch, step, steps, self._format_terms(recent),
                    self._format_lr(rates), clips_per_s, mem)
        self.writer.write("window", self.global_step, epoch, scalars)

    # ------------------------------------------------------------------ interrupts
    def _resume_text(self) -> str:
        return self.resume_hint or "train.py ... --resume auto"

    def _interrupt_message(self, epoch: int, step: int, during: str = "") -> str:
        """One line: where training stopped, which checkpoint is kept, the command that continues it."""
        last = os.path.join(self.output_dir, LAST_NAME)
        where = f"Interrupted at epoch {epoch}, " + (f"during {during}" if during else f"step {step}")
        if epoch > self.start_epoch or os.path.isfile(last):
            kept = f"{last} (epoch {epoch - 1}) is kept"
            return f"{where}: {kept}; resume with: {self._resume_text()}"
        if not metrics_written(self.output_dir):
            return f"{where}, before the first training step: nothing to resume; run the same command again"
        return f"{where}, before the first checkpoint: nothing to resume; start again with --overwrite"

    def fit(self) -> dict:
        """Train from ``start_epoch`` to SOLVER.MAX_EPOCHS; returns validation mAPs before/after.

        Ctrl-C, SIGTERM or SIGUSR1 (utils.signals) stop training at the next step boundary with
        TrainingInterrupted: in a training step, the memory rebuild or validation. The checkpoint of
        the last finished epoch is kept (a half epoch is not saved: resuming from one would not give
        the weights of a straight run); an epoch whose validation was interrupted is saved, and its
        validation runs first when the run is resumed.
        """
        with signals.stop_at_step_boundaries():
            return self._fit()

    def _validate_epoch(self, epoch: int, report: dict) -> None:
        """Validation after ``epoch``; on an interrupt the epoch is saved (validation pending) first."""
        try:
            value = self.validate(f"epoch {epoch}")
        except RunInterrupted:
            self.save(epoch, validation_pending=True)
            last = os.path.join(self.output_dir, LAST_NAME)
            raise TrainingInterrupted(
                f"Interrupted at epoch {epoch}, during its validation: {last} (epoch {epoch}, validation pending) "
                f"is kept; resume with: {self._resume_text()}") from None
        if value is not None:
            self.writer.write("val", self.global_step, epoch, {"mAP": value})
            report["val_mAP_after"] = value
            if value > self.best_map:
                self.best_map, self.best_epoch = value, epoch
                self.best_val_summary = self.last_val_summary
                logger.info("new best (epoch %d, val mAP-3 %.2f): %s", epoch, value, BEST_NAME)
                if self.is_main:
                    save_checkpoint(self.state_dict(epoch), os.path.join(self.output_dir, BEST_NAME))

    def _is_eval_epoch(self, epoch: int) -> bool:
        period = self.cfg.SOLVER.EVAL_PERIOD
        return period > 0 and (epoch % period == 0 or epoch == self.cfg.SOLVER.MAX_EPOCHS)

    def _fit(self) -> dict:
        cfg = self.cfg
        report: dict = {}
        self.check_free_space()
        if self.validation_pending is not None:   # resumed from an epoch whose validation was interrupted
            epoch, self.validation_pending = self.validation_pending, None
            logger.info("Validating epoch %d first (its validation was interrupted)", epoch)
            self._validate_epoch(epoch, report)
            self.save(epoch)
            dist_utils.barrier()
        if self.start_epoch == 1 and cfg.SOLVER.EVAL_PERIOD > 0:
            try:
                report["val_mAP_before"] = self.validate("before training")
            except RunInterrupted:
                raise TrainingInterrupted(self._interrupt_message(1, 0, during="the validation before training")) \
                    from None
        for epoch in range(self.start_epoch, cfg.SOLVER.MAX_EPOCHS + 1):
            if signals.stop_requested_on_any_rank(self.device):
                raise TrainingInterrupted(self._interrupt_message(epoch, 0))
            start = time.perf_counter()
            means = self.train_epoch(epoch)
            self.clock.epoch_done(time.perf_counter() - start)
            logger.info("epoch %d done in %.1f s (of %d): %s | %s | %.1f clips/s | %s", epoch,
                        time.perf_counter() - start, cfg.SOLVER.MAX_EPOCHS, self._format_terms(means),
                        self._format_lr(self.epoch_lrs), self.last_clips_per_s, self.clock.describe(epoch))
            self.writer.write("epoch", self.global_step, epoch,
                              {**means, **self.epoch_lrs, "clips_per_s": self.last_clips_per_s})
            if self._is_eval_epoch(epoch):
                self._validate_epoch(epoch, report)
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
        weights the model holds (see :meth:`use_final_weights`, whose dict ``chosen`` goes to the JSON).

        A bad test frame does not cost the trained run: an unreadable frame is replaced by the nearest
        readable frame of its tracklet (a warning in log.txt names it, as DATASETS.SKIP_CORRUPT_FRAMES
        does), and a tracklet without one readable frame is left out of the CSV and the metrics, named
        in log.txt and in ``test_results.json`` (``left_out_tracklets``). A stop signal raises
        TrainingInterrupted (training is complete; ``--resume auto`` runs this evaluation only).
        """
        if not self.dataset.cases or not self.is_main:
            return None
        cases = {c: s for c, s in self.dataset.cases.items() if c in self.cfg.TEST.CASES}
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATASETS.SKIP_CORRUPT_FRAMES = True
        cfg.freeze()
        extra = dict(chosen or {})
        try:
            try:
                return self._evaluate_cases(cfg, cases, extra)
            except CorruptFrameError as exc:   # a tracklet without one readable frame
                logger.error("Final evaluation: %s", _first_line(exc))
                left_out = unreadable_tracklets({t.folder: t for split in cases.values()
                                                 for t in (*split.query, *split.gallery)}.values())
                if not left_out:
                    raise
                logger.warning(
                    "Final evaluation: leaving out %d tracklet(s) without one readable frame: %s. submission.csv "
                    "lacks them; fix or remove their frames, then run evaluate_all_cases.py --model_path %s",
                    len(left_out), ", ".join(left_out), extra.get("checkpoint", self.output_dir))
                extra["left_out_tracklets"] = left_out
                cases = {c: dataclasses.replace(split, query=[t for t in split.query if t.folder not in left_out],
                                                gallery=[t for t in split.gallery if t.folder not in left_out])
                         for c, split in cases.items()}
                return self._evaluate_cases(cfg, cases, extra)
        except RunInterrupted:
            last = os.path.join(self.output_dir, LAST_NAME)
            raise TrainingInterrupted(
                f"Interrupted during the final evaluation: training is complete ({last} holds epoch "
                f"{self.cfg.SOLVER.MAX_EPOCHS}); no submission.csv was written. Evaluate with: "
                f"{self._resume_text()} (runs the final evaluation only)") from None

    def _evaluate_cases(self, cfg, cases: dict, extra: dict) -> dict:
        return run_case_evaluation(
            cfg, self.model, cases, self.device, self.output_dir,
            csv_path=os.path.join(self.output_dir, "submission.csv"),
            json_path=os.path.join(self.output_dir, "test_results.json"),
            extra=extra, title=f"Test results ({self.weights_label})",
        )

    # ------------------------------------------------------------------ disk space
    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint: the model's tensors, plus the optimizer's state (measured when
        it exists, else two moments per trained parameter for Adam-like optimizers, one for momentum)."""
        model_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        state = self.optimizer.state
        if state:
            optim_bytes = sum(v.numel() * v.element_size() for s in state.values() for v in s.values()
                              if torch.is_tensor(v))
        else:
            defaults = self.optimizer.defaults
            moments = 2 if "betas" in defaults else (1 if defaults.get("momentum", 0) else 0)
            trained = sum(p.numel() * p.element_size() for g in self.optimizer.param_groups for p in g["params"]
                          if p.requires_grad)
            optim_bytes = moments * trained
        return model_bytes + optim_bytes

    def planned_checkpoints(self) -> list[tuple[int, str]]:
        """(epoch, path) of each checkpoint file this run still creates (files it only rewrites take no
        new space), in the order they appear."""
        cfg = self.cfg
        planned, seen = [], set()
        best = os.path.join(self.output_dir, BEST_NAME)
        for epoch in range(self.start_epoch, cfg.SOLVER.MAX_EPOCHS + 1):
            names = []
            if self.dataset.val and self._is_eval_epoch(epoch):
                names.append(best)
            names.append(os.path.join(self.output_dir, LAST_NAME))
            if epoch % cfg.SOLVER.CHECKPOINT_PERIOD == 0 or epoch == cfg.SOLVER.MAX_EPOCHS:
                names.append(os.path.join(self.output_dir, f"checkpoint_epoch{epoch}.pth"))
            for path in names:
                if path not in seen and not os.path.exists(path):
                    planned.append((epoch, path))
                seen.add(path)
        return planned

    def check_free_space(self) -> bool:
        """Before the first epoch (rank 0): warn when the disk under OUTPUT_DIR cannot hold the checkpoints
        this run will write (plus the temporary copy of one write). Returns True when it warned."""
        if not self.is_main:
            return False
        planned = self.planned_checkpoints()
        if not planned:
            return False
        size = self.checkpoint_bytes()
        try:
            free = shutil.disk_usage(self.output_dir).free
        except OSError:
            return False
        need = (len(planned) + 1) * size   # + one temporary file while a checkpoint is written
        if free >= need:
            return False
        fits = max(0, free // max(size, 1) - 1)
        full_at = planned[min(int(fits), len(planned) - 1)][0]
        logger.warning(
            "Low disk space: %s has %s free, but this run writes %d more checkpoint files of about %s each "
            "(%s with the temporary copy of a write); the disk may fill up at about epoch %d. Free some "
            "space, point OUTPUT_DIR at a larger disk, or raise SOLVER.CHECKPOINT_PERIOD (now %d).",
            self.output_dir, _human_bytes(free), len(planned), _human_bytes(size), _human_bytes(need), full_at,
            self.cfg.SOLVER.CHECKPOINT_PERIOD)
        return True

    def close(self) -> None:
        """Close the metrics writer and stop the training loader's persistent workers."""
        shutdown = getattr(self.train_loader, "shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self.writer.close()

