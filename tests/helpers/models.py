"""A tiny SAS model (tiny-vit-16 backbone, small MGTM and PRSD) built without any download, and clips for it."""
from __future__ import annotations

import torch

from configs import load_config
from model.build import build_model

# Overrides of the defaults: 64x32 frames (a 4x2 patch grid), 4-frame clips, a small shape branch.
TINY_SAS = [
    "MODEL.BACKBONE", "tiny-vit-16", "MODEL.PRETRAIN_PATH", "", "MODEL.PRETRAIN_TAG", "",
    "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "DATALOADER.SEQ_LEN", "4",
    "MODEL.MGTM.SPATIAL_TOKENS", "4", "MODEL.MGTM.HEADS", "4",
    "MODEL.PRSD.FEAT_DIM", "32", "MODEL.PRSD.HIDDEN_DIM", "32", "MODEL.PRSD.ITERATIONS", "2",
    "MODEL.PRSD.AGG_LAYERS", "1", "MODEL.PRSD.AGG_HEADS", "2", "MODEL.PRSD.AGG_FFN_DIM", "64",
    "MODEL.PRSD.LOAD_PRETRAINED", "False",
]
# For comparisons of two forward passes (compiled against eager): no dropout noise.
NO_DROPOUT = ["MODEL.PRSD.REGRESSOR_DROPOUT", "0.0", "MODEL.PRSD.AGG_DROPOUT", "0.0"]
NUM_CLASSES, NUM_CAMERAS = 6, 3


def make_tiny_sas(*opts: str, seed: int = 0):
    """-> (cfg, SASModel) of TINY_SAS + ``opts``, weights drawn after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    cfg = load_config(None, TINY_SAS + list(opts))
    return cfg, build_model(cfg, NUM_CLASSES, NUM_CAMERAS)


def make_clips(batch: int, frames: int = 4, seed: int = 0):
    """A batch for the tiny model: frames (B, T, 3, 64, 32), camids (B,), views (B,) and labels (B,),
    each label on two consecutive clips."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, 3, 64, 32, generator=gen), torch.arange(batch) % NUM_CAMERAS,
            torch.arange(batch) % 2, torch.arange(batch) // 2 % NUM_CLASSES)
