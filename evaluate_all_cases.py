"""Evaluate a checkpoint on the DetReIDX cases and write the leaderboard submission CSV.

``python evaluate_all_cases.py --model_path CKPT [--config_file CFG] [--cases 1,2,3] [--csv PATH]
[--output_file results.json] [--eval_dir DIR] [--save_features F.npz] [--visualize N] [KEY VALUE ...]``
(options and KEY VALUE overrides in any order).

The model is rebuilt from the config stored in the checkpoint; ``--config_file`` may only change
data paths, loader, test and device keys (DATASETS.*, DATALOADER.* but the training clip length,
TEST.*, MODEL.DEVICE, SOLVER.AMP); its OUTPUT_DIR (a training folder) is not used. ``KEY VALUE``
overrides apply last; every key that differs from the checkpoint's config is printed. Evaluation never writes into the training folder itself: its files
(CSV, JSON, plots, rank lists, log) go to one folder per evaluation, by default
``OUTPUT_DIR/eval/<checkpoint stem>[-rerank]/``. It never generates data.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from configs import PRETRAINED_KEYS, changed_keys, clear_keys, config_from_yaml_text, load_config
from tools.cli import make_parser, parse_command_line, run_main
from utils.fileio import ensure_folder

logger = logging.getLogger("evaluate")

# Keys a --config_file may change on top of the checkpoint's stored config.
OVERRIDABLE_SECTIONS = ("DATASETS", "DATALOADER", "TEST")
OVERRIDABLE_KEYS = (("MODEL", "DEVICE"), ("SOLVER", "AMP"))
# Keys of those sections that shape the model (the shape classifiers have one per training frame
# position): always the checkpoint's.
MODEL_SHAPING_KEYS = (("DATALOADER", "SEQ_LEN"), ("DATALOADER", "NUM_INSTANCE"))
# Cleared on top of any config: the checkpoint holds every weight (never fetch or read the initial
# pretrained files again), and evaluation never generates data.
CLEARED_KEYS = PRETRAINED_KEYS + ("DATASETS.SYNTHETIC_IF_MISSING",)


def _case_list(text: str) -> list[int]:
    """'1,3' -> [1, 3] (argparse type: a bad list is a usage error, not a traceback)."""
    try:
        cases = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected case numbers like 1,2,3, got {text!r}") from None
    if not set(cases) <= {1, 2, 3}:
        raise argparse.ArgumentTypeError(f"cases are 1, 2 and 3, got {text!r}")
    return cases


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--config_file", default="", help="YAML whose data/test keys override the checkpoint's")
    parser.add_argument("--model_path", required=True, help="checkpoint written by train.py")
    parser.add_argument("--cases", type=_case_list, default=None, help="comma-separated cases, e.g. 1,2,3 (default TEST.CASES)")
    parser.add_argument("--eval_dir", default="",
                        help="folder for this evaluation's files (default OUTPUT_DIR/eval/<checkpoint stem>[-rerank])")
    parser.add_argument("--csv", default="", help="submission CSV path (default EVAL_DIR/submission.csv)")
    parser.add_argument("--output_file", default="", help="results JSON (default EVAL_DIR/results.json)")
    parser.add_argument("--save_features", default="", help="save features, ids and case indices to this .npz")
    parser.add_argument("--visualize", type=int, default=0, help="write rank-list pictures for N queries per case")
    return parse_command_line(parser, argv)


def resolve_config(stored_yaml: str, config_file: str, opts):
    """Checkpoint config <- data/test keys of ``config_file`` <- ``opts``; pretrained paths cleared,
    no data generation.

    Returns (config, changes): changes lists ``(KEY, checkpoint value, new value, source)`` for every
    key whose value differs from the checkpoint's stored config (source: the command line when an
    override set it, else the config file).
    """
    stored = config_from_yaml_text(stored_yaml)
    cfg = stored.clone()
    cfg.defrost()
    if config_file:
        file_cfg = load_config(config_file)
        for section in OVERRIDABLE_SECTIONS:
            cfg[section] = file_cfg[section].clone()
        for section, key in OVERRIDABLE_KEYS:
            cfg[section][key] = file_cfg[section][key]
        for section, key in MODEL_SHAPING_KEYS:
            cfg[section][key] = stored[section][key]
    clear_keys(cfg, CLEARED_KEYS)
    cfg.freeze()
    resolved = config_from_yaml_text(cfg.dump(), opts)
    by_command_line = {key for key, _, _ in changed_keys(cfg, resolved)}
    changes = [(key, old, new, "the command line" if key in by_command_line else f"--config_file {config_file}")
               for key, old, new in changed_keys(stored, resolved) if key not in CLEARED_KEYS]
    return resolved, changes


def default_eval_dir(cfg, model_path: str, output_dir_changed: bool) -> str:
    """OUTPUT_DIR/eval/<checkpoint stem>[-rerank]; OUTPUT_DIR is the checkpoint's own folder unless the
    command line sets OUTPUT_DIR (the stored one may be relative to another working folder)."""
    base = cfg.OUTPUT_DIR if output_dir_changed else os.path.dirname(os.path.abspath(model_path))
    stem = os.path.splitext(os.path.basename(model_path))[0] + ("-rerank" if cfg.TEST.RERANK else "")
    return os.path.join(base, "eval", stem)


def describe_checkpoint(path: str, state: dict) -> str:
    meta = state.get("meta", {})
    trained_with = meta.get("config_file") or "a config stored in the checkpoint"
    return f"{path} (epoch {state.get('epoch', '?')}, trained with {trained_with})"


def main(argv=None) -> dict:
    args = parse_args(argv)
    from utils.checkpoint import load_train_checkpoint
    from utils.logger import quiet_console, setup_logging

    if args.model_path.lower().endswith((".yaml", ".yml", ".json", ".csv", ".txt")):
        sys.exit(f"--model_path {args.model_path} is a {os.path.splitext(args.model_path)[1]} file, not a checkpoint: "
                 "give a .pth written by train.py (e.g. OUTPUT_DIR/checkpoint_best.pth); a config goes to --config_file.")
    state = load_train_checkpoint(args.model_path)   # CheckpointError: one line through run_main
    cfg, changes = resolve_config(state["config"], args.config_file, args.opts)
    output_dir_changed = any(key == "OUTPUT_DIR" and source == "the command line" for key, _, _, source in changes)
    eval_dir = args.eval_dir or default_eval_dir(cfg, args.model_path, output_dir_changed)
    ensure_folder(eval_dir)
    log_path = os.path.join(eval_dir, "evaluate_log.txt")
    if os.path.exists(log_path):  # one folder, one evaluation: a rerun replaces the previous log
        os.remove(log_path)
    setup_logging(eval_dir, 0, filename="evaluate_log.txt")
    quiet_console(log_path)   # the dataset table goes to evaluate_log.txt
    logger.info("Loaded %s", describe_checkpoint(args.model_path, state))
    if changes:
        logger.info("Changed against the checkpoint's config:\n%s", "\n".join(
            f"  {key}: {old!r} -> {new!r} ({source})" for key, old, new, source in changes))
    else:
        logger.info("Config: as stored in the checkpoint (no key changed)")
    logger.info("Evaluation files go to %s", eval_dir)

    from datasets.build import build_dataset
    from processor.evaluation import run_case_evaluation, select_cases
    from processor.inference import model_from_checkpoint
    from utils.distributed import init_distributed

    device = init_distributed(cfg.MODEL.DEVICE)
    meta = state["meta"]
    # Explained errors (a missing SMPL file, mismatched weights) reach the command line as one line.
    model = model_from_checkpoint(state, cfg, args.model_path).to(device)
    wanted = args.cases or list(cfg.TEST.CASES)
    from datasets.detreidx import standard_camera_index

    # Test tracklets get the camera ids the model was trained with (older checkpoints: the count only).
    camera_index = meta.get("camera_index") or standard_camera_index(num_cameras=int(meta["num_cameras"]))
    dataset = build_dataset(cfg, cases=wanted, camera_index=camera_index)
    try:
        cases = select_cases(dataset.cases, wanted, dataset.root)
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    return run_case_evaluation(
        cfg, model, cases, device, eval_dir,
        csv_path=args.csv or os.path.join(eval_dir, "submission.csv"),
        json_path=args.output_file or os.path.join(eval_dir, "results.json"),
        save_features=args.save_features or None,
        visualize=args.visualize,
        extra={"checkpoint": os.path.abspath(args.model_path), "epoch": state.get("epoch"),
               "trained_with": meta.get("config_file", ""), "eval_dir": eval_dir,
               "changed_keys": {key: new for key, _, new, _ in changes}},
    )


if __name__ == "__main__":
    run_main(main)
