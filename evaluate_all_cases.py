"""Evaluate a checkpoint on the DetReIDX cases and write the leaderboard submission CSV.

``python evaluate_all_cases.py --config_file CFG --model_path CKPT [--cases 1,2,3] [--csv PATH]
[--output_file results.json] [--save_features F.npz] [--visualize N] [KEY VALUE ...]``

The model is rebuilt from the config stored in the checkpoint; ``--config_file`` may only change
data paths, loader, test and device keys (DATASETS.*, DATALOADER.*, TEST.*, MODEL.DEVICE,
SOLVER.AMP, OUTPUT_DIR). ``KEY VALUE`` overrides apply last.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from configs import ConfigError, config_from_yaml_text, load_config

logger = logging.getLogger("evaluate")

# Keys a --config_file may change on top of the checkpoint's stored config.
OVERRIDABLE_SECTIONS = ("DATASETS", "DATALOADER", "TEST")
OVERRIDABLE_KEYS = (("MODEL", "DEVICE"), ("SOLVER", "AMP"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default="", help="YAML whose data/test keys override the checkpoint's")
    parser.add_argument("--model_path", required=True, help="checkpoint written by train.py")
    parser.add_argument("--cases", default="", help="comma-separated cases, e.g. 1,2,3 (default TEST.CASES)")
    parser.add_argument("--csv", default="", help="submission CSV path (default OUTPUT_DIR/submission.csv)")
    parser.add_argument("--output_file", default="", help="results JSON (default OUTPUT_DIR/results.json)")
    parser.add_argument("--save_features", default="", help="save features, ids and case indices to this .npz")
    parser.add_argument("--visualize", type=int, default=0, help="write rank-list pictures for N queries per case")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return parser.parse_args(argv)


def resolve_config(stored_yaml: str, config_file: str, opts):
    """Checkpoint config <- data/test keys of ``config_file`` <- ``opts``; pretrained paths cleared."""
    cfg = config_from_yaml_text(stored_yaml)
    cfg.defrost()
    if config_file:
        file_cfg = load_config(config_file)
        for section in OVERRIDABLE_SECTIONS:
            cfg[section] = file_cfg[section].clone()
        for section, key in OVERRIDABLE_KEYS:
            cfg[section][key] = file_cfg[section][key]
        cfg.OUTPUT_DIR = file_cfg.OUTPUT_DIR
    # The checkpoint holds every weight: never fetch or read the initial pretrained files again.
    cfg.MODEL.PRETRAIN_PATH = ""
    cfg.MODEL.PRETRAIN_TAG = ""
    cfg.MODEL.PRSD.PRETRAINED = ""
    cfg.freeze()
    return config_from_yaml_text(cfg.dump(), opts)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from utils.checkpoint import CheckpointError, load_checkpoint, load_model_state
    from utils.logger import setup_logging

    try:
        state = load_checkpoint(args.model_path)
    except CheckpointError as exc:
        sys.exit(str(exc))
    if "config" not in state or "model" not in state:
        sys.exit(f"{args.model_path} is not a checkpoint written by train.py (no stored config/model)")
    try:
        cfg = resolve_config(state["config"], args.config_file, args.opts)
    except ConfigError as exc:
        sys.exit(f"Config error: {exc}")
    output_dir = cfg.OUTPUT_DIR
    setup_logging(output_dir, 0, filename="evaluate_log.txt")

    from datasets.build import build_dataset
    from model.backbone import PretrainedWeightsError
    from model.build import build_model, check_weight_files
    from processor.evaluation import run_case_evaluation, select_cases
    from utils.distributed import init_distributed

    device = init_distributed(cfg.MODEL.DEVICE)
    meta = state.get("meta", {})
    try:  # the SMPL files the stored config names are still read to build PRSD
        check_weight_files(cfg)
    except PretrainedWeightsError as exc:
        sys.exit(str(exc))
    model = build_model(cfg, num_classes=meta["num_classes"], num_cameras=meta["num_cameras"]).to(device)
    try:
        load_model_state(model, state["model"], args.model_path)
    except CheckpointError as exc:
        sys.exit(str(exc))
    dataset = build_dataset(cfg)
    wanted = [int(c) for c in args.cases.split(",") if c.strip()] if args.cases else list(cfg.TEST.CASES)
    try:
        cases = select_cases(dataset.cases, wanted)
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    return run_case_evaluation(
        cfg, model, cases, device, output_dir,
        csv_path=args.csv or os.path.join(output_dir, "submission.csv"),
        json_path=args.output_file or os.path.join(output_dir, "results.json"),
        save_features=args.save_features or None,
        visualize=args.visualize,
        extra={"checkpoint": args.model_path, "epoch": state.get("epoch")},
    )


if __name__ == "__main__":
    from utils.fileio import WriteFailure
    from utils.metrics import NonFiniteFeaturesError
    try:
        main()
    except (WriteFailure, NonFiniteFeaturesError) as exc:   # the message names the file and the cause
        sys.exit(f"error: {exc}")
