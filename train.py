"""Train SAS-VPReID: ``python train.py --config_file CFG [--overlay CFG2] [--resume auto|PATH] [--overwrite]
[--verbose] [KEY VALUE ...]`` (options and KEY VALUE overrides in any order).

Under ``torchrun --nproc_per_node=N train.py ...`` it trains with DDP (NCCL on GPUs, gloo on CPU).
A fresh run refuses an OUTPUT_DIR that holds another run: continue it with ``--resume auto``, pick
another OUTPUT_DIR, or ``--overwrite`` (deletes that run's files first). A run holds OUTPUT_DIR/run.lock
while it runs: a second process into the same OUTPUT_DIR refuses at once, naming the first. Ctrl-C,
SIGTERM or SIGUSR1 stop at the next step boundary and print the command that resumes (exit status 130).
"""
from __future__ import annotations

import logging
import os
import shlex
import sys

from configs import load_config
from utils.cli import make_parser, parse_command_line, run_main
from utils.distributed import cleanup_distributed, configure_cpu_threads, get_rank, init_distributed
from utils.fileio import ensure_folder, write_text_atomic
from utils.logger import quiet_console, setup_logging
from utils.runlock import RunLock
from utils.signals import stop_at_step_boundaries

logger = logging.getLogger("train")

# Multi-line INFO records of these loggers (the dataset statistics table) go to log.txt, and to the
# console only with --verbose.
def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--config_file", default="", help="YAML config (may inherit with _BASE_: one file or a list)")
    parser.add_argument("--overlay", action="append", default=[], metavar="YAML",
                        help="YAML merged on top of --config_file (repeatable), e.g. --overlay tiny.yml")
    parser.add_argument("--resume", default="", help="'auto' (newest good checkpoint in OUTPUT_DIR) or a checkpoint path")
    parser.add_argument("--overwrite", action="store_true",
                        help="OUTPUT_DIR holds another run: delete its files, then train from scratch")
    parser.add_argument("--verbose", action="store_true",
                        help="print the resolved config and the dataset tables on the console too")
    return parse_command_line(parser, argv)


def resume_command(argv) -> str:
    """The command line that continues this run: the same words with ``--resume auto``."""
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


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts, overlays=args.overlay)
    output_dir = cfg.OUTPUT_DIR
    from datasets.build import check_data_root
    from model.build import check_weight_files

    # Checks that need no files written first: a failed start leaves no config.yaml or log.txt.
    check_weight_files(cfg)
    check_data_root(cfg)
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:   # one run per OUTPUT_DIR, held until this run ends
        lock = RunLock(output_dir, what="OUTPUT_DIR",
                       elsewhere="train into another folder (OUTPUT_DIR other/folder)").acquire()
    try:
        with stop_at_step_boundaries():
            return _train(args, argv, cfg, lock)
    finally:
        if lock is not None:
            lock.release()


def _train(args, argv, cfg, lock) -> dict:
    output_dir = cfg.OUTPUT_DIR
    from processor.trainer import Trainer, check_run_folder, clear_run_files
    from utils.checkpoint import find_resume_checkpoint, load_checkpoint

    stale = check_run_folder(output_dir, args.resume, args.overwrite)  # before anything is written
    device = init_distributed(cfg.MODEL.DEVICE)
    try:
        if get_rank() == 0:
            clear_run_files(stale)
        from utils.distributed import barrier

        barrier()
        setup_logging(output_dir, get_rank())
        if not args.verbose:
            quiet_console(os.path.join(output_dir, "log.txt"))
        if lock is not None and lock.taken_over:
            logger.warning("%s", lock.taken_over)
        if stale:
            logger.info("Deleted %d files/folders of %s in %s first", len(stale),
                        "the previous run (--overwrite)" if args.overwrite else "a start that failed before training",
                        output_dir)
        threads = configure_cpu_threads(cfg) if device.type == "cpu" else ""
        config_path = os.path.join(output_dir, "config.yaml")
        if get_rank() == 0:
            ensure_folder(output_dir)
            write_text_atomic(config_path, cfg.dump())
        sources = " + ".join([args.config_file or "(defaults)"] + args.overlay)
        logger.info("Config %s%s -> resolved config in %s%s; device %s%s", sources,
                    f" + {len(args.opts) // 2} overrides" if args.opts else "", config_path,
                    "" if args.verbose else " (--verbose prints it)", device, f" ({threads})" if threads else "")
        if args.verbose:
            logger.info("Resolved config:\n%s", cfg.dump())
        found = None
        if args.resume:
            found = find_resume_checkpoint(output_dir) if args.resume == "auto" else (args.resume,
                                                                                      load_checkpoint(args.resume))
        complete = found is not None and int(found[1]["epoch"]) >= cfg.SOLVER.MAX_EPOCHS
        if complete:
            logger.info("Training was complete: %s holds epoch %d of %d (SOLVER.MAX_EPOCHS); %s", found[0],
                        int(found[1]["epoch"]), cfg.SOLVER.MAX_EPOCHS,
                        "running the final evaluation only" if cfg.TEST.EVAL_AFTER_TRAINING
                        else "nothing left to do (TEST.EVAL_AFTER_TRAINING False)")
        # A finished run's log already holds the dataset table: not again.
        trainer = Trainer(cfg, device, output_dir, config_file=sources, resume_hint=resume_command(argv),
                          dataset_table=not complete)
        try:
            if args.resume:
                trainer.resume(args.resume, found=found)
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


if __name__ == "__main__":
    run_main(main)
