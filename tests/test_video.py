"""Frame decoding (datasets/video.py): read_frame against PIL, and unreadable frames through the real loaders: an
error naming the file, or with DATASETS.SKIP_CORRUPT_FRAMES a neighbour, a warning and a count (across loader
workers too); a tracklet with no readable frame is an error."""
import logging
import os

import numpy as np
import pytest
import torch

from datasets import video
from datasets.build import build_dataset, build_inference_loader
from datasets.video import CorruptFrameError, read_frame
from tests.helpers.data import make_tiny_cfg


def test_read_frame_matches_pil(tiny_root):
    from PIL import Image
    ds = build_dataset(make_tiny_cfg(tiny_root))
    path = ds.train[0].frames[0]
    ours = read_frame(path)
    reference = np.asarray(Image.open(path).convert("RGB"))
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 2.0   # decoders differ in IDCT rounding only


@pytest.fixture()
def damaged(tiny_root_copy):
    """(root, dataset, tracklet): a private copy of the tiny data and a case-1 gallery tracklet of >= 3 frames."""
    root = tiny_root_copy
    cfg = make_tiny_cfg(root)
    ds = build_dataset(cfg)
    tracklet = next(t for t in ds.cases[1].gallery if t.num_frames >= 3)
    return root, ds, tracklet


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_frame_error_names_the_file(damaged, damage):
    root, ds, tracklet = damaged
    path = tracklet.frames[1]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"garbage": b"not a jpeg at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(CorruptFrameError, match=os.path.basename(path)) as err:
        read_frame(path)
    assert "SKIP_CORRUPT_FRAMES" in str(err.value)
    cfg = make_tiny_cfg(root, "TEST.SAMPLING", "dense")
    loader = build_inference_loader(cfg, [tracklet])
    with pytest.raises(CorruptFrameError, match=os.path.basename(path)):
        list(loader)


def test_skip_corrupt_frames_warns_and_counts(damaged, caplog):
    root, ds, tracklet = damaged
    bad = tracklet.frames[1]
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 broken")
    cfg = make_tiny_cfg(root, "DATASETS.SKIP_CORRUPT_FRAMES", "True", "TEST.SAMPLING", "dense")
    loader = build_inference_loader(cfg, [tracklet])
    with caplog.at_level(logging.WARNING, logger="datasets.video"):
        batches = list(loader)
    assert loader.dataset.skipped_frames == 1
    assert any(os.path.basename(bad) in r.getMessage() for r in caplog.records)
    frames = batches[0]["frames"][0]
    # The bad frame (position 1) is replaced by its nearest readable neighbour (frame 0).
    assert torch.equal(frames[1], frames[0])


def test_skipped_frames_counted_across_workers(damaged):
    root, ds, tracklet = damaged
    for path in tracklet.frames[1:3]:
        with open(path, "wb") as f:
            f.write(b"junk")
    cfg = make_tiny_cfg(root, "DATASETS.SKIP_CORRUPT_FRAMES", "True", "DATALOADER.NUM_WORKERS", "2", "TEST.IMS_PER_BATCH", "1",
                   "TEST.SEQ_LEN", "1", "TEST.SAMPLING", "dense")
    loader = build_inference_loader(cfg, [tracklet])
    list(loader)
    assert loader.dataset.skipped_frames == 2


def test_whole_tracklet_unreadable_is_an_error(damaged):
    root, ds, tracklet = damaged
    for path in tracklet.frames:
        with open(path, "wb") as f:
            f.write(b"junk")
    loader = build_inference_loader(make_tiny_cfg(root, "DATASETS.SKIP_CORRUPT_FRAMES", "True"), [tracklet])
    with pytest.raises(CorruptFrameError, match="Every frame"):
        list(loader)
    assert video.MAX_COUNTER_SLOTS >= 2
