"""Helpers shared by the dataset tests: a tiny synthetic DetReIDX root and a config pointing at it."""
from __future__ import annotations

import os

from configs import load_config
from datasets.synthetic import SyntheticConfig, generate_dataset

# Small enough to generate in well under a second, big enough for P x K batches and all three cases.
TINY = SyntheticConfig(num_ids=6, num_test_ids=3, seed=7, ground_tracklets=2, aerial_tracklets=2,
                       min_frames=3, max_frames=10, ground_size=48, aerial_size=32)


def make_tiny_root(folder, config: SyntheticConfig = TINY) -> str:
    root = os.path.join(str(folder), "tiny_xfd")
    generate_dataset(root, config)
    return root


def tiny_cfg(root: str, *opts: str):
    """The demo config on ``root``: 16x8 frames, no workers, 2 x 2 batches."""
    return load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "demo.yml"), [
        "DATASETS.ROOT_DIR", root, "DATASETS.SYNTHETIC_IF_MISSING", "False", "DATASETS.VAL_IDS", "0",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.NUM_INSTANCE", "2", "DATALOADER.SEQ_LEN", "4",
        "SOLVER.IMS_PER_BATCH", "4", "INPUT.SIZE_TRAIN", "[16, 8]", "INPUT.SIZE_TEST", "[16, 8]",
        "TEST.SEQ_LEN", "4", "TEST.IMS_PER_BATCH", "8", "DATASETS.SCAN_CACHE_DIR", "", *opts,
    ])
