"""The training loop: memory rebuilds, AMP, gradient accumulation, DDP, checkpoints, logging, validation."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections import defaultdict

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from datasets.build import build_dataset, build_train_loader
from loss.build import build_loss
from model.build import build_model, check_weight_files
from processor.evaluation import run_case_evaluation
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


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the step and the loss term."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(base_seed: int, epoch: int, rank: int) -> int:
    """Every epoch starts from its own seed, so a resumed run draws exactly what a straight run does."""
    return base_seed + 1_000_003 * epoch + 7919 * rank


class Trainer:
    """Owns the model, loss, optimizer, schedule and loaders of one training run.

    Build with :meth:`from_config`; run with :meth:`fit`. Rank 0 alone logs and writes files.
    """

    def __init__(self, cfg, device: torch.device, output_dir: str):
        self.cfg = cfg
        self.device = device
        self.output_dir = output_dir
        self.rank = dist_utils.get_rank()
        self.world_size = dist_utils.get_world_size()
        self.is_main = self.rank == 0

        check_weight_files(cfg)  # a missing weight file fails now, not after the dataset scan
        seed_everything(cfg.SOLVER.SEED)
        self.dataset = build_dataset(cfg)  # logs its statistics table
        self.num_classes = self.dataset.num_train_pids
        self.num_cameras = self.dataset.num_cameras
        self.train_loader = build_train_loader(cfg, self.dataset, rank=self.rank, world_size=self.world_size)

        self.model = build_model(cfg, num_classes=self.num_classes, num_cameras=self.num_cameras).to(device)
        if self.world_size > 1 and cfg.SOLVER.SYNC_BN:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.loss_fn = build_loss(cfg, self.num_classes)
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
            "rng": rng_state(),
            "config": self.cfg.dump(),
            "meta": {"num_classes": self.num_classes, "num_cameras": self.num_cameras},
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
        logger.info("Memory rebuilt from %d training tracklets (%d evenly spaced frames each) in %.1fs",
                    len(self.dataset.train), rebuild_cfg.TEST.SEQ_LEN, time.perf_counter() - start)

    # ------------------------------------------------------------------ validation
    def validate(self, tag: str) -> float | None:
        """Val-split evaluation on rank 0 (never the test set); returns pooled mAP (%) or None."""
        if not self.dataset.val:
            return None
        value = None
        if self.is_main:
            summary = run_case_evaluation(
                self.cfg, self.model, self.dataset.val, self.device, self.output_dir, condition_report=False
            )
            value = summary.get("mAP-3")
            logger.info("Validation mAP (%s): %.2f", tag, value if value is not None else float("nan"))
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
        progress = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, disable=not self.is_main)
        pending: list[torch.Tensor] = []  # per-step [loss, terms..., acc] on the device, until a log step
        pending_names: list[str] = []
        for step, batch in enumerate(progress, start=1):
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
                feats = dist_utils.all_gather_tensor(outputs["memory_feat"].detach().float())
                self.model.memory.update(feats, dist_utils.all_gather_tensor(labels))
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
            if step % cfg.SOLVER.LOG_PERIOD == 0 or step == steps:
                self._flush_step_values(pending, pending_names, meters, epoch, step)
                self._log_step(epoch, step, steps, meters, window_clips / (time.perf_counter() - window_start))
                window_start, window_clips = time.perf_counter(), 0
        self.scheduler.step()
        skipped = getattr(self.train_loader.dataset, "skipped_frames", 0)
        if skipped:
            logger.warning("Skipped %d unreadable training frames so far (DATASETS.SKIP_CORRUPT_FRAMES)", skipped)
        return {k: float(np.mean(v)) for k, v in meters.items()}

    def _log_step(self, epoch: int, step: int, steps: int, meters: dict, clips_per_s: float) -> None:
        recent = {k: float(np.mean(v[-self.cfg.SOLVER.LOG_PERIOD:])) for k, v in meters.items()}
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        scalars = {**recent, "lr": lr, "clips_per_s": clips_per_s}
        mem = ""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
            scalars["peak_mem_gib"] = peak
            mem = f" mem {peak:.1f}GiB"
        terms = " ".join(f"{k} {v:.3f}" for k, v in recent.items())
        logger.info("epoch %d [%d/%d] %s lr %.2e %.1f clips/s%s", epoch, step, steps, terms, lr, clips_per_s, mem)
        self.writer.write("train", self.global_step, epoch, scalars)

    def fit(self) -> dict:
        """Train from ``start_epoch`` to SOLVER.MAX_EPOCHS; returns validation mAPs before/after."""
        cfg = self.cfg
        report: dict = {}
        eval_period = cfg.SOLVER.EVAL_PERIOD
        if self.start_epoch == 1 and eval_period > 0:
            report["val_mAP_before"] = self.validate("before training")
        for epoch in range(self.start_epoch, cfg.SOLVER.MAX_EPOCHS + 1):
            start = time.perf_counter()
            means = self.train_epoch(epoch)
            logger.info("epoch %d done in %.1fs: %s", epoch, time.perf_counter() - start,
                        " ".join(f"{k} {v:.3f}" for k, v in means.items()))
            self.writer.write("epoch", self.global_step, epoch, means)
            if eval_period > 0 and (epoch % eval_period == 0 or epoch == cfg.SOLVER.MAX_EPOCHS):
                value = self.validate(f"epoch {epoch}")
                if value is not None:
                    self.writer.write("val", self.global_step, epoch, {"mAP": value})
                    report["val_mAP_after"] = value
                    if value > self.best_map:
                        self.best_map = value
                        if self.is_main:
                            save_checkpoint(self.state_dict(epoch), os.path.join(self.output_dir, BEST_NAME))
            self.save(epoch)
            dist_utils.barrier()
        report["best_val_mAP"] = self.best_map if self.best_map >= 0 else None
        return report

    def evaluate_test(self) -> dict | None:
        """After training: the test cases on disk, with the submission CSV (rank 0)."""
        if not self.dataset.cases or not self.is_main:
            return None
        cases = {c: s for c, s in self.dataset.cases.items() if c in self.cfg.TEST.CASES}
        return run_case_evaluation(
            self.cfg, self.model, cases, self.device, self.output_dir,
            csv_path=os.path.join(self.output_dir, "submission.csv"),
            json_path=os.path.join(self.output_dir, "test_results.json"),
        )

    def close(self) -> None:
        self.writer.close()

