"""Loader builders: batch contract, determinism (also across worker counts), synthetic-if-missing,
dense inference, frame decoding and corrupt frames."""
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from datasets import video
from datasets.build import build_dataset, build_inference_loader, build_train_loader
from datasets.video import CorruptFrameError, read_frame
from tests.datasets_fixtures import make_tiny_root, tiny_cfg


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("loaders"))


def _epoch(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_train_batches_follow_the_contract(tiny_root):
    cfg = tiny_cfg(tiny_root)
    ds = build_dataset(cfg)
    loader = build_train_loader(cfg, ds)
    batches = _epoch(loader, 0)
    assert len(batches) == len(loader) > 0
    batch = batches[0]
    assert set(batch) == {"frames", "labels", "camids", "views", "indices"}
    assert batch["frames"].shape == (4, 4, 3, 16, 8) and batch["frames"].dtype == torch.float32
    for key in ("labels", "camids", "views", "indices"):
        assert batch[key].shape == (4,) and batch[key].dtype == torch.long
    for b in batches:
        tracklets = [ds.train[i] for i in b["indices"].tolist()]
        assert b["labels"].tolist() == [t.label for t in tracklets]
        assert b["camids"].tolist() == [t.camid for t in tracklets]
        assert b["views"].tolist() == [t.view_id for t in tracklets]
        assert len(set(b["labels"].tolist())) == 2


def test_train_loader_deterministic_across_runs_and_worker_counts(tiny_root):
    cfg0 = tiny_cfg(tiny_root)
    ds = build_dataset(cfg0)
    first = _epoch(build_train_loader(cfg0, ds), 1)
    again = _epoch(build_train_loader(cfg0, ds), 1)
    workers = _epoch(build_train_loader(tiny_cfg(tiny_root, "DATALOADER.NUM_WORKERS", "2"), ds), 1)
    for a, b, c in zip(first, again, workers):
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    other_epoch = _epoch(build_train_loader(cfg0, ds), 2)
    assert any(not torch.equal(a["frames"], b["frames"]) for a, b in zip(first, other_epoch))


def test_ddp_ranks_split_each_batch(tiny_root):
    cfg = tiny_cfg(tiny_root, "SOLVER.IMS_PER_BATCH", "8")
    ds = build_dataset(cfg)
    whole = _epoch(build_train_loader(cfg, ds), 0)
    ranks = [_epoch(build_train_loader(cfg, ds, rank=r, world_size=2), 0) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for step, batch in enumerate(whole):
        joined = torch.cat([ranks[0][step]["indices"], ranks[1][step]["indices"]])
        assert torch.equal(joined, batch["indices"]) and ranks[0][step]["frames"].shape[0] == 4


def test_shuffle_frames_is_train_only(tiny_root):
    cfg = tiny_cfg(tiny_root, "INPUT.SHUFFLE_FRAMES", "True", "INPUT.ERASE_PROB", "0.0", "INPUT.FLIP_PROB", "0.0",
                   "INPUT.HUE_PROB", "0.0", "DATALOADER.SEQ_LEN", "8")
    ds = build_dataset(cfg)
    loader = build_train_loader(cfg, ds)
    plain = build_train_loader(tiny_cfg(tiny_root, "INPUT.ERASE_PROB", "0.0", "INPUT.FLIP_PROB", "0.0",
                                        "INPUT.HUE_PROB", "0.0", "DATALOADER.SEQ_LEN", "8"), ds)
    assert loader.dataset.shuffle_frames and not plain.dataset.shuffle_frames
    assert not hasattr(build_inference_loader(cfg, ds.train).dataset, "shuffle_frames")
    index, seed = next(iter(loader.batch_sampler))[0]
    shuffled, ordered = loader.dataset[(index, seed)]["frames"], plain.dataset[(index, seed)]["frames"]
    # Same frames, in another order (unless the tracklet is short and padded with repeats).
    assert sorted(f.sum().item() for f in shuffled) == pytest.approx(sorted(f.sum().item() for f in ordered))


def test_inference_loader_even_and_dense(tiny_root):
    cfg = tiny_cfg(tiny_root)
    ds = build_dataset(cfg)
    gallery = ds.cases[1].gallery
    even = list(build_inference_loader(cfg, gallery))
    assert set(even[0]) == {"frames", "camids", "views", "indices"}
    assert torch.cat([b["indices"] for b in even]).tolist() == list(range(len(gallery)))
    assert all(b["frames"].shape[1:] == (4, 3, 16, 8) for b in even)
    again = list(build_inference_loader(cfg, gallery))
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(even, again))

    dense_loader = build_inference_loader(tiny_cfg(tiny_root, "TEST.SAMPLING", "dense"), gallery)
    indices = torch.cat([b["indices"] for b in dense_loader]).tolist()
    expected = [i for i, t in enumerate(gallery) for _ in range(-(-t.num_frames // 4))]
    assert indices == expected
    with pytest.raises(ValueError, match="TEST.SAMPLING"):
        build_inference_loader(tiny_cfg(tiny_root, "TEST.SAMPLING", "all"), gallery)


def test_val_and_memory_loaders(tiny_root):
    cfg = tiny_cfg(tiny_root, "DATASETS.VAL_IDS", "2")
    ds = build_dataset(cfg)
    assert ds.num_train_pids == 4 and set(ds.val) == {1, 2, 3}
    memory = build_inference_loader(cfg, ds.train)
    assert sum(b["frames"].shape[0] for b in memory) == len(ds.train)
    assert next(iter(build_inference_loader(cfg, ds.val[3].query)))["frames"].shape[1] == 4


def test_synthetic_if_missing_generates_once(tmp_path):
    root = str(tmp_path / "data" / "xfd")
    opts = ["DATASETS.SYNTHETIC_IF_MISSING", "True", "DATASETS.SYNTHETIC_IDS", "2", "DATASETS.SYNTHETIC_TEST_IDS", "1"]
    ds = build_dataset(tiny_cfg(root, *opts))
    assert ds.num_train_pids == 2 and set(ds.cases) == {1, 2, 3}
    assert sorted(os.listdir(tmp_path / "data")) == ["xfd"], "no temporary folder may be left behind"
    stamp = os.stat(os.path.join(root, "synthetic_xfd.json")).st_mtime_ns
    build_dataset(tiny_cfg(root, *opts))
    assert os.stat(os.path.join(root, "synthetic_xfd.json")).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset(tiny_cfg(str(tmp_path / "absent")))


# ----------------------------------------------------------------------------- decoding and corrupt frames
def test_read_frame_matches_pil(tiny_root):
    from PIL import Image
    ds = build_dataset(tiny_cfg(tiny_root))
    path = ds.train[0].frames[0]
    ours = read_frame(path)
    reference = np.asarray(Image.open(path).convert("RGB"))
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 2.0   # decoders differ in IDCT rounding only


@pytest.fixture()
def damaged(tiny_root, tmp_path):
    root = str(tmp_path / "damaged")
    shutil.copytree(tiny_root, root)
    cfg = tiny_cfg(root)
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
    cfg = tiny_cfg(root, "TEST.SAMPLING", "dense")
    loader = build_inference_loader(cfg, [tracklet])
    with pytest.raises(CorruptFrameError, match=os.path.basename(path)):
        list(loader)


def test_skip_corrupt_frames_warns_and_counts(damaged, caplog):
    root, ds, tracklet = damaged
    bad = tracklet.frames[1]
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 broken")
    cfg = tiny_cfg(root, "DATASETS.SKIP_CORRUPT_FRAMES", "True", "TEST.SAMPLING", "dense")
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
    cfg = tiny_cfg(root, "DATASETS.SKIP_CORRUPT_FRAMES", "True", "DATALOADER.NUM_WORKERS", "2", "TEST.IMS_PER_BATCH", "1",
                   "TEST.SEQ_LEN", "1", "TEST.SAMPLING", "dense")
    loader = build_inference_loader(cfg, [tracklet])
    list(loader)
    assert loader.dataset.skipped_frames == 2


def test_whole_tracklet_unreadable_is_an_error(damaged):
    root, ds, tracklet = damaged
    for path in tracklet.frames:
        with open(path, "wb") as f:
            f.write(b"junk")
    loader = build_inference_loader(tiny_cfg(root, "DATASETS.SKIP_CORRUPT_FRAMES", "True"), [tracklet])
    with pytest.raises(CorruptFrameError, match="Every frame"):
        list(loader)
    assert video.MAX_COUNTER_SLOTS >= 2
