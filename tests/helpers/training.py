"""Overrides and a trainer that shrink the demo training run to seconds on 2 CPU cores."""
from __future__ import annotations

import torch

from tests.helpers.data import make_tiny_cfg

def make_tiny_opts(data_root: str, output_dir: str, epochs: int = 2, **extra: str) -> list[str]:
    """KEY VALUE overrides of configs/demo.yml for a run of ``epochs`` tiny epochs on ``data_root`` (8 synthetic
    identities, generated there when missing) into ``output_dir``; ``extra`` keys override these. 64x32 frames
    give a 4x2 patch grid on tiny-vit-16: an epoch takes a fraction of a second."""
    opts = {
        "DATASETS.ROOT_DIR": data_root,
        "DATASETS.SCAN_CACHE_DIR": "",   # tests never write the user's scan cache
        # A command-line root gets synthetic data only when asked for on the command line too.
        "DATASETS.SYNTHETIC_IF_MISSING": "True",
        "DATASETS.SYNTHETIC_IDS": "8",
        "DATASETS.SYNTHETIC_TEST_IDS": "4",
        "DATASETS.VAL_IDS": "2",
        "DATALOADER.NUM_WORKERS": "0",
        "INPUT.SIZE_TRAIN": "[64,32]",
        "INPUT.SIZE_TEST": "[64,32]",
        "DATALOADER.SEQ_LEN": "4",
        "TEST.SEQ_LEN": "4",
        "SOLVER.IMS_PER_BATCH": "8",
        "DATALOADER.NUM_INSTANCE": "2",
        "SOLVER.MAX_EPOCHS": str(epochs),
        "SOLVER.WARMUP_EPOCHS": "1",
        "SOLVER.STEPS": "[1]",
        "SOLVER.CHECKPOINT_PERIOD": "1",
        "SOLVER.EVAL_PERIOD": "0",
        "SOLVER.LOG_PERIOD": "1",
        "TEST.EVAL_AFTER_TRAINING": "False",
        "OUTPUT_DIR": output_dir,
    }
    opts.update(extra)
    return [item for pair in opts.items() for item in pair]


def make_tiny_trainer(root: str, output_dir, *opts: str):
    """A processor.trainer.Trainer on the tiny data at ``root`` (make_tiny_cfg, 32x16 frames, 4-frame clips),
    on the CPU, without validation, test evaluation or checkpoints before epoch 100; ``opts`` last.
    The caller closes it (``trainer.close()``)."""
    from processor.trainer import Trainer

    cfg = make_tiny_cfg(root, "DATALOADER.SEQ_LEN", "4", "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]",
                        "SOLVER.EVAL_PERIOD", "0", "TEST.EVAL_AFTER_TRAINING", "False", "SOLVER.WARMUP_EPOCHS", "1",
                        "SOLVER.STEPS", "[10]", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", str(output_dir), *opts)
    cfg.freeze()
    return Trainer(cfg, torch.device("cpu"), str(output_dir))
