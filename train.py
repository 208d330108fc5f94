"""Train SAS-VPReID: ``python train.py --config_file CFG [--resume auto|PATH] [KEY VALUE ...]``.

Under ``torchrun --nproc_per_node=N train.py ...`` it trains with DDP (NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from configs import ConfigError, load_config
from utils.checkpoint import write_text_atomic
from utils.distributed import cleanup_distributed, get_rank, init_distributed
from utils.logger import setup_logging

logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default="", help="YAML config (may inherit with _BASE_)")
    parser.add_argument("--resume", default="", help="'auto' (newest good checkpoint in OUTPUT_DIR) or a checkpoint path")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.BASE_LR 1e-4")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as exc:
        sys.exit(f"Config error: {exc}")
    device = init_distributed(cfg.MODEL.DEVICE)
    from processor.trainer import Trainer  # heavy imports after the config is known to be valid

    try:
        output_dir = cfg.OUTPUT_DIR
        setup_logging(output_dir, get_rank())
        if get_rank() == 0:
            os.makedirs(output_dir, exist_ok=True)
            write_text_atomic(os.path.join(output_dir, "config.yaml"), cfg.dump())
        logger.info("Config file %s, device %s\n%s", args.config_file or "(defaults)", device, cfg.dump())
        trainer = Trainer(cfg, device, output_dir)
        if args.resume:
            trainer.resume(args.resume)
        report = trainer.fit()
        if report.get("val_mAP_before") is not None and report.get("val_mAP_after") is not None:
            logger.info("Validation mAP before training %.2f -> after training %.2f",
                        report["val_mAP_before"], report["val_mAP_after"])
        if cfg.TEST.EVAL_AFTER_TRAINING:
            report["test"] = trainer.evaluate_test()
        trainer.close()
        return report
    finally:
        cleanup_distributed()


# Errors whose message already names the file or key and the fix: the command line shows the message
# alone (a traceback would bury it). Looked up in sys.modules: a class never imported was never raised.
EXPLAINED_ERRORS = (
    ("datasets.detreidx", "DatasetLayoutError"), ("datasets.video", "CorruptFrameError"),
    ("model.backbone", "PretrainedWeightsError"), ("utils.checkpoint", "CheckpointError"),
    ("processor.trainer", "NonFiniteLossError"), ("utils.fileio", "WriteFailure"),
    ("utils.metrics", "NonFiniteFeaturesError"),
)


def is_explained_error(exc: BaseException) -> bool:
    classes = [getattr(sys.modules.get(module), name, None) for module, name in EXPLAINED_ERRORS]
    return isinstance(exc, tuple(c for c in classes if c is not None))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - anything unexplained is re-raised with its traceback
        if not is_explained_error(exc):
            raise
        sys.exit(f"error: {exc}")
