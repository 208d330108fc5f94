"""One training run from a resolved config, as ``train.py`` and ``tools.ablate`` start it: the checks
before anything is written, the run lock, the run folder (refuse / clear), logging, the resolved
config.yaml, resume, training, the final weights and the test evaluation.

``run_training(cfg, ...)`` returns the trainer's report; ``resume_command(argv)`` is the train.py
command line that continues a run. Errors that explain themselves (ConfigError, RunFolderError, a
missing weight file, ...) and TrainingInterrupted propagate: the command lines print their one line.
"""
from __future__ import annotations

import logging
import os
import shlex

from utils.distributed import cleanup_distributed, configure_cpu_threads, get_rank, init_distributed
from utils.fileio import ensure_folder, write_text_atomic
from utils.logger import quiet_console, setup_logging
from utils.runlock import RunLock
from utils.signals import stop_at_step_boundaries

logger = logging.getLogger("train")   # the run's log lines read "train INFO: ...", as train.py's always did


def resume_command(argv) -> str:
    """The command line that continues the run of train.py's ``argv``: the same words with ``--resume auto``."""
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in ("--resume", "--overwrite"):
            skip = word == "--resume"
            continue
        if word.startswith("--resume="):
            continue
        words.append(word)
    launcher = "torchrun ... train.py" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "python train.py"
    return f"{launcher} {shlex.join(words)} --resume auto".replace("  ", " ")


def config_sources(config_file: str, overlays=()) -> str:
    """"configs/a.yml + tiny.yml": what the config came from, for the log and the checkpoints."""
    return " + ".join([config_file or "(defaults)", *overlays])


def run_training(cfg, resume: str = "", overwrite: bool = False, verbose: bool = False, sources: str = "(defaults)",
                 overrides: int = 0, resume_hint: str = "") -> dict:
    """Train ``cfg`` into ``cfg.OUTPUT_DIR`` (under torchrun: with DDP); returns the report of
    :meth:`Trainer.fit` plus "final_weights", "final_val", "training_was_complete" and, with
    TEST.EVAL_AFTER_TRAINING, "test".

    resume: "" (a fresh run), "auto" (the newest good checkpoint in OUTPUT_DIR) or a checkpoint path;
    overwrite: a fresh run deletes the files of a run already in OUTPUT_DIR (else RunFolderError);
    verbose: the resolved config and the dataset tables on the console too;
    sources: what the config came from (:func:`config_sources`), overrides: how many KEY VALUE pairs
    changed it (both for the log; ``sources`` also goes into the checkpoints);
    resume_hint: the command that continues this run, printed when it is interrupted.
    """
    from datasets.build import check_data_root
    from model.build import check_weight_files

    # Checks that need no files written first: a failed start leaves no config.yaml or log.txt.
    check_weight_files(cfg)
    check_data_root(cfg)
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:   # one run per OUTPUT_DIR, held until this run ends
        lock = RunLock(cfg.OUTPUT_DIR, what="OUTPUT_DIR",
                       elsewhere="train into another folder (OUTPUT_DIR other/folder)").acquire()
    try:
        with stop_at_step_boundaries():
            return _train(cfg, resume, overwrite, verbose, sources, overrides, resume_hint, lock)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, resume: str, overwrite: bool, verbose: bool, sources: str, overrides: int, resume_hint: str,
           lock) -> dict:
    output_dir = cfg.OUTPUT_DIR
    from processor.run_folder import check_run_folder, clear_run_files
    from processor.trainer import Trainer
    from utils.checkpoint import find_resume_checkpoint, load_checkpoint

    stale = check_run_folder(output_dir, resume, overwrite)  # before anything is written
    device = init_distributed(cfg.MODEL.DEVICE)
    try:
        if get_rank() == 0:
            clear_run_files(stale)
        from utils.distributed import barrier

        barrier()
        setup_logging(output_dir, get_rank())
        if not verbose:
            quiet_console(os.path.join(output_dir, "log.txt"))
        if lock is not None and lock.taken_over:
            logger.warning("%s", lock.taken_over)
        if stale:
            logger.info("Deleted %d files/folders of %s in %s first", len(stale),
                        "the previous run (--overwrite)" if overwrite else "a start that failed before training",
                        output_dir)
        threads = configure_cpu_threads(cfg) if device.type == "cpu" else ""
        config_path = os.path.join(output_dir, "config.yaml")
        if get_rank() == 0:
            ensure_folder(output_dir)
            write_text_atomic(config_path, cfg.dump())
        logger.info("Config %s%s -> resolved config in %s%s; device %s%s", sources,
                    f" + {overrides} overrides" if overrides else "", config_path,
                    "" if verbose else " (--verbose prints it)", device, f" ({threads})" if threads else "")
        if verbose:
            logger.info("Resolved config:\n%s", cfg.dump())
        found = None
        if resume:
            found = find_resume_checkpoint(output_dir) if resume == "auto" else (resume, load_checkpoint(resume))
        complete = found is not None and int(found[1]["epoch"]) >= cfg.SOLVER.MAX_EPOCHS
        if complete:
            logger.info("Training was complete: %s holds epoch %d of %d (SOLVER.MAX_EPOCHS); %s", found[0],
                        int(found[1]["epoch"]), cfg.SOLVER.MAX_EPOCHS,
                        "running the final evaluation only" if cfg.TEST.EVAL_AFTER_TRAINING
                        else "nothing left to do (TEST.EVAL_AFTER_TRAINING False)")
        # A finished run's log already holds the dataset table: not again.
        trainer = Trainer(cfg, device, output_dir, config_file=sources, resume_hint=resume_hint,
                          dataset_table=not complete)
        try:
            if resume:
                trainer.resume(resume, found=found)
            report = trainer.fit()
            if report.get("val_mAP_before") is not None and report.get("val_mAP_after") is not None:
                logger.info("Validation mAP-3 before training %.2f -> after training %.2f",
                            report["val_mAP_before"], report["val_mAP_after"])
            chosen = trainer.use_final_weights()
            report["final_weights"] = chosen
            report["final_val"] = trainer.final_val_summary
            report["training_was_complete"] = complete
            if cfg.TEST.EVAL_AFTER_TRAINING:
                report["test"] = trainer.evaluate_test(chosen)
        finally:
            trainer.close()
        return report
    finally:
        cleanup_distributed()
