"""Train SAS-VPReID: ``python train.py --config_file CFG [--overlay CFG2] [--resume auto|PATH] [--overwrite]
[--verbose] [KEY VALUE ...]`` (options and KEY VALUE overrides in any order).

Under ``torchrun --nproc_per_node=N train.py ...`` it trains with DDP (NCCL on GPUs, gloo on CPU).
A fresh run refuses an OUTPUT_DIR that holds another run: continue it with ``--resume auto``, pick
another OUTPUT_DIR, or ``--overwrite`` (deletes that run's files first). A run holds OUTPUT_DIR/run.lock
while it runs: a second process into the same OUTPUT_DIR refuses at once, naming the first. Ctrl-C,
SIGTERM or SIGUSR1 stop at the next step boundary and print the command that resumes (exit status 130).
"""
from __future__ import annotations

import sys

from configs import load_config
from processor.training_run import config_sources, resume_command, run_training
from utils.cli import make_parser, parse_command_line, run_main


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


def main(argv=None) -> dict:
    """Parse ``argv`` (default: the command line), then train (processor.training_run); -> the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts, overlays=args.overlay)
    return run_training(cfg, resume=args.resume, overwrite=args.overwrite, verbose=args.verbose,
                        sources=config_sources(args.config_file, args.overlay), overrides=len(args.opts) // 2,
                        resume_hint=resume_command(argv))


if __name__ == "__main__":
    run_main(main)
