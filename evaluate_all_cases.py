"""Evaluate a checkpoint on the DetReIDX cases and write the leaderboard submission CSV.

``python evaluate_all_cases.py --model_path CKPT [--config_file CFG] [--cases 1,2,3] [--csv PATH]
[--output_file results.json] [--eval_dir DIR] [--save_features F.npz] [--visualize N] [KEY VALUE ...]``
(options and KEY VALUE overrides in any order).

The model is rebuilt from the config stored in the checkpoint. ``--config_file`` changes the keys
it sets (itself or through ``_BASE_``) that the command line can change: the data, loader, test,
model and input keys (DATASETS.*, DATALOADER.* but the training clip length, TEST.*, MODEL.*,
INPUT.* but the training size, SOLVER.AMP); its training-only keys (SOLVER.*, OUTPUT_DIR: a training folder) are not
used, and those that differ from the checkpoint's are listed as such. ``KEY VALUE`` overrides apply last; every key that
differs from the checkpoint's config is printed with its source, and a model those keys change so
that the checkpoint's weights no longer fit is refused, naming the keys. Evaluation never writes
into the training folder itself: its files (CSV, JSON, plots, rank lists, log) go to one folder per
evaluation, by default ``OUTPUT_DIR/eval/<checkpoint stem>[-rerank]/``, held by a lock
(``run.lock``) while it runs. It never generates data. The data root is checked before anything is
written or built; Ctrl-C, SIGTERM or SIGUSR1 stop it before the next batch (exit status 130).
"""
from __future__ import annotations

import argparse
import logging
import os

from configs import (PRETRAINED_KEYS, changed_keys, clear_keys, config_from_yaml_text, file_keys, get_key,
                     load_config, set_key)
from utils.cli import fail, make_parser, parse_command_line, run_main
from utils.fileio import ensure_folder
from utils.runlock import RunLock
from utils.signals import RunInterrupted, stop_at_step_boundaries

logger = logging.getLogger("evaluate")

# Keys a --config_file may change on top of the checkpoint's stored config (as the command line can).
OVERRIDABLE_SECTIONS = ("DATASETS", "DATALOADER", "TEST", "MODEL", "INPUT")
OVERRIDABLE_KEYS = (("SOLVER", "AMP"),)
# Sections whose changes shape the model that is built: named when the weights do not fit it.
MODEL_SECTIONS = ("MODEL.", "INPUT.")
# Keys of those sections that describe the training clips the model was built for (the shape
# classifiers have one per training frame position, the backbone's position grid follows the
# training size): always the checkpoint's when they come from a file.
MODEL_SHAPING_KEYS = (("DATALOADER", "SEQ_LEN"), ("DATALOADER", "NUM_INSTANCE"), ("INPUT", "SIZE_TRAIN"))
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


def _from_file(key: str) -> bool:
    """Whether evaluation takes ``key`` from --config_file (the keys the command line may change)."""
    parts = tuple(key.split("."))
    return (parts[0] in OVERRIDABLE_SECTIONS or parts[:2] in OVERRIDABLE_KEYS) and parts[:2] not in MODEL_SHAPING_KEYS


def resolve_config(stored_yaml: str, config_file: str, opts):
    """Checkpoint config <- the keys ``config_file`` sets (data, loader, test, model, input keys and
    SOLVER.AMP) <- ``opts``; pretrained paths cleared, no data generation.

    Returns (config, changes, ignored): changes lists ``(KEY, checkpoint value, new value, source)``
    for every key whose value differs from the checkpoint's stored config (source: the command line
    when an override set it, else the config file); ignored lists the keys the file sets to another
    value than the checkpoint's that evaluation does not use (training-only keys).
    """
    stored = config_from_yaml_text(stored_yaml)
    cfg = stored.clone()
    cfg.defrost()
    ignored = []
    if config_file:
        file_cfg = load_config(config_file)
        for key in file_keys(config_file):
            value = get_key(file_cfg, key)
            if _from_file(key):
                set_key(cfg, key, value)
            elif value != get_key(stored, key) and key not in CLEARED_KEYS:
                ignored.append(key)
    clear_keys(cfg, CLEARED_KEYS)
    cfg.freeze()
    resolved = config_from_yaml_text(cfg.dump(), opts)
    by_command_line = {key for key, _, _ in changed_keys(cfg, resolved)}
    changes = [(key, old, new, "the command line" if key in by_command_line else f"--config_file {config_file}")
               for key, old, new in changed_keys(stored, resolved) if key not in CLEARED_KEYS]
    return resolved, changes, ignored


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
    from datasets.build import check_data_root
    from model.build import check_weight_files
    from utils.checkpoint import load_train_checkpoint

    if args.model_path.lower().endswith((".yaml", ".yml", ".json", ".csv", ".txt")):
        fail(f"--model_path {args.model_path} is a {os.path.splitext(args.model_path)[1]} file, not a checkpoint: "
             "give a .pth written by train.py (e.g. OUTPUT_DIR/checkpoint_best.pth); a config goes to --config_file.")
    state = load_train_checkpoint(args.model_path)   # CheckpointError: one line through run_main
    cfg, changes, ignored = resolve_config(state["config"], args.config_file, args.opts)
    check_weight_files(cfg)   # before anything is built
    output_dir_changed = any(key == "OUTPUT_DIR" and source == "the command line" for key, _, _, source in changes)
    eval_dir = args.eval_dir or default_eval_dir(cfg, args.model_path, output_dir_changed)
    with RunLock(eval_dir, what="Evaluation folder", elsewhere="give this evaluation another --eval_dir") as lock, \
            stop_at_step_boundaries():
        # Before anything is written into the folder or built: a wrong root leaves no folder behind.
        check_data_root(cfg)
        try:
            return _evaluate(args, state, cfg, changes, ignored, eval_dir, lock)
        except RunInterrupted as exc:
            raise RunInterrupted(f"{exc} during the evaluation: no new CSV or JSON was written (files are written "
                                 "atomically); run the same command again") from None


def _evaluate(args, state: dict, cfg, changes, ignored, eval_dir: str, lock) -> dict:
    from utils.logger import quiet_console, setup_logging

    ensure_folder(eval_dir)
    log_path = os.path.join(eval_dir, "evaluate_log.txt")
    if os.path.exists(log_path):  # one folder, one evaluation: a rerun replaces the previous log
        os.remove(log_path)
    setup_logging(eval_dir, 0, filename="evaluate_log.txt")
    quiet_console(log_path)   # the dataset table goes to evaluate_log.txt
    if lock.taken_over:
        logger.warning("%s", lock.taken_over)
    logger.info("Loaded %s", describe_checkpoint(args.model_path, state))
    if changes:
        logger.info("Changed against the checkpoint's config:\n%s", "\n".join(
            f"  {key}: {old!r} -> {new!r} ({source})" for key, old, new, source in changes))
    else:
        logger.info("Config: as stored in the checkpoint (no key changed)")
    if ignored:
        logger.info("Not used from --config_file %s (training-only keys; the checkpoint's values hold): %s",
                    args.config_file, ", ".join(ignored))
    logger.info("Evaluation files go to %s", eval_dir)

    from datasets.build import build_dataset
    from datasets.detreidx.names import standard_camera_index
    from processor.evaluation import run_case_evaluation, select_cases
    from processor.inference import model_from_checkpoint
    from utils.checkpoint import CheckpointError
    from utils.distributed import configure_cpu_threads, init_distributed

    device = init_distributed(cfg.MODEL.DEVICE)
    if device.type == "cpu":
        logger.info("CPU: %s", configure_cpu_threads(cfg))
    meta = state["meta"]
    wanted = args.cases or list(cfg.TEST.CASES)
    # The data first (seconds), then the model: a layout error does not wait for the model build.
    # Test tracklets get the camera ids the model was trained with (older checkpoints: the count only).
    camera_index = meta.get("camera_index") or standard_camera_index(num_cameras=int(meta["num_cameras"]))
    dataset = build_dataset(cfg, cases=wanted, camera_index=camera_index)
    try:
        cases = select_cases(dataset.cases, wanted, dataset.root)
    except FileNotFoundError as exc:
        fail(str(exc))
    # Explained errors (a missing SMPL file, mismatched weights) reach the command line as one line.
    try:
        model = model_from_checkpoint(state, cfg, args.model_path).to(device)
    except CheckpointError as exc:
        shaping = [f"{key} ({source})" for key, _, _, source in changes if key.startswith(MODEL_SECTIONS)]
        if not shaping:
            raise
        raise CheckpointError(
            f"{exc}\n  The model was built with these keys changed against the checkpoint's config: "
            f"{', '.join(shaping)}. --config_file and KEY VALUE overrides apply to MODEL.* and INPUT.* keys; "
            "drop those keys (or use the config the checkpoint was trained with) to evaluate the model as trained."
        ) from None
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
