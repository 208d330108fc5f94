"""Faults in frame files and tracklet folders, through the real loaders and the training entry point.

Rows: corrupt / truncated / zero-byte JPEG in a tracklet; empty tracklet folder; one-frame tracklet.
"""
import logging
import os
import re

import pytest
import torch

import train
from configs import load_config
from datasets.build import build_dataset, build_inference_loader, build_train_loader
from datasets.detreidx.scan import DatasetLayoutError
from datasets.frame_sampling import inference_clips
from datasets.video import CorruptFrameError
from tests.helpers.data import FRAME_DAMAGE, damage_frame, make_tiny_cfg
from tests.helpers.paths import DEMO_CONFIG
from tests.helpers.training import make_tiny_opts


def _clip_frame(cfg, tracklet, position=0):
    """Path of the frame at ``position`` of the tracklet's test-time clip (a frame the loader reads)."""
    indices = inference_clips(tracklet.num_frames, int(cfg.TEST.SEQ_LEN), str(cfg.TEST.SAMPLING))[0]
    return tracklet.frames[int(indices[position])]


@pytest.mark.slow
@pytest.mark.parametrize("kind, workers", [(kind, 0) for kind in FRAME_DAMAGE] + [("truncated", 2)],
                         ids=[*FRAME_DAMAGE, "truncated-in-a-loader-worker"])
def test_unreadable_frame_is_an_error_naming_the_file(tiny_root_copy, kind, workers):
    # (After a worker error, torch's DataLoader takes ~5 s to join its workers: the worker case runs once.)
    cfg = make_tiny_cfg(tiny_root_copy, "DATALOADER.NUM_WORKERS", str(workers))
    gallery = build_dataset(cfg).cases[1].gallery
    bad = _clip_frame(cfg, gallery[1])
    damage_frame(bad, kind)
    with pytest.raises(CorruptFrameError) as caught:
        for _ in build_inference_loader(cfg, gallery):
            pass
    message = str(caught.value)
    assert bad in message
    assert "DATASETS.SKIP_CORRUPT_FRAMES" in message  # the fix is named


@pytest.mark.slow
def test_skip_corrupt_frames_uses_a_neighbour_warns_and_counts(tiny_root_copy, caplog):
    cfg = make_tiny_cfg(tiny_root_copy, "DATASETS.SKIP_CORRUPT_FRAMES", "True")
    tracklet = next(t for t in build_dataset(cfg).cases[1].gallery if t.num_frames >= 5)
    clip = inference_clips(tracklet.num_frames, int(cfg.TEST.SEQ_LEN), "even")[0]
    bad = [tracklet.frames[int(i)] for i in clip[:3]]
    for path, kind in zip(bad, FRAME_DAMAGE):
        damage_frame(path, kind)
    loader = build_inference_loader(cfg, [tracklet])
    with caplog.at_level(logging.WARNING, logger="datasets.video"):
        batches = list(loader)
    assert batches[0]["frames"].shape == (1, int(cfg.TEST.SEQ_LEN), 3, 16, 8)
    assert torch.isfinite(batches[0]["frames"]).all()
    assert loader.dataset.skipped_frames == 3
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for path in bad:
        assert path in warned


def test_tracklet_without_one_readable_frame_is_an_error_naming_it(tiny_root_copy):
    cfg = make_tiny_cfg(tiny_root_copy, "DATASETS.SKIP_CORRUPT_FRAMES", "True")
    tracklet = build_dataset(cfg).cases[2].query[0]
    for path in tracklet.frames:
        damage_frame(path, "truncated")
    with pytest.raises(CorruptFrameError, match=re.escape(tracklet.folder)):
        list(build_inference_loader(cfg, [tracklet]))


@pytest.mark.slow
def test_training_stops_on_an_unreadable_frame_or_skips_and_counts_it(tiny_root_copy, tmp_path, caplog):
    cfg = load_config(DEMO_CONFIG, make_tiny_opts(tiny_root_copy, str(tmp_path / "unused"), epochs=1))
    tracklet = build_dataset(cfg).train[0]
    bad = tracklet.frames[:-1]  # every frame but the last: any clip of this tracklet meets a damaged one
    for i, path in enumerate(bad):
        damage_frame(path, FRAME_DAMAGE[i % len(FRAME_DAMAGE)])

    stop = str(tmp_path / "stop")
    with pytest.raises(CorruptFrameError) as caught:
        train.main(["--config_file", DEMO_CONFIG, *make_tiny_opts(tiny_root_copy, stop, epochs=1)])
    assert any(path in str(caught.value) for path in bad)
    assert not os.path.exists(os.path.join(stop, "checkpoint_last.pth"))

    skip = str(tmp_path / "skip")
    with caplog.at_level(logging.INFO):
        train.main(["--config_file", DEMO_CONFIG,
                    *make_tiny_opts(tiny_root_copy, skip, epochs=1, **{"DATASETS.SKIP_CORRUPT_FRAMES": "True"})])
    assert "Skipping unreadable frame" in caplog.text and any(path in caplog.text for path in bad)
    counts = [int(n) for n in re.findall(r"[Ss]kipped (\d+) unreadable", caplog.text)]
    assert counts and max(counts) >= 1, caplog.text[-3000:]
    assert os.path.isfile(os.path.join(skip, "checkpoint_last.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("leftover", [None, "Thumbs.db"])
def test_empty_tracklet_folder_is_an_error_naming_it(tiny_root_copy, leftover):
    empty = os.path.join(tiny_root_copy, "case3_aerial_to_aerial", "gallery", "0008", "0008_99")
    os.makedirs(empty)
    if leftover:
        open(os.path.join(empty, leftover), "wb").close()
    with pytest.raises(DatasetLayoutError, match=re.escape(empty)):
        build_dataset(make_tiny_cfg(tiny_root_copy))


def test_one_frame_tracklet_is_padded_to_the_clip_length(tiny_root_copy):
    cfg = make_tiny_cfg(tiny_root_copy)
    dataset = build_dataset(cfg)
    train_tracklet, gallery_tracklet = dataset.train[0], dataset.cases[1].gallery[0]
    for tracklet in (train_tracklet, gallery_tracklet):
        for path in tracklet.frames[1:]:
            os.remove(path)
    dataset = build_dataset(cfg)
    seq_len = int(cfg.DATALOADER.SEQ_LEN)

    one = next(t for t in dataset.train if t.name == train_tracklet.name)
    assert one.num_frames == 1
    train_clips = build_train_loader(cfg, dataset).dataset
    item = train_clips[(dataset.train.index(one), 123)]
    assert item["frames"].shape == (seq_len, 3, 16, 8)
    assert all(torch.equal(item["frames"][0], frame) for frame in item["frames"])  # the one frame, repeated

    one = next(t for t in dataset.cases[1].gallery if t.name == gallery_tracklet.name)
    for mode in ("even", "dense"):
        mode_cfg = make_tiny_cfg(tiny_root_copy, "TEST.SAMPLING", mode)
        batches = list(build_inference_loader(mode_cfg, [one]))
        assert len(batches) == 1 and batches[0]["frames"].shape == (1, int(cfg.TEST.SEQ_LEN), 3, 16, 8)
        clip = batches[0]["frames"][0]
        assert all(torch.equal(clip[0], frame) for frame in clip)
