"""The dataset and loader builders (datasets/build.py): batch contract, determinism (also across worker counts),
DDP shards, train-only frame shuffling, even and dense inference, synthetic data if missing (and a missing root
without it named with its nearest folder), the scan cache folder and junk rule passed on."""
import os
import shutil

import pytest
import torch

from configs import load_config
from datasets.build import build_dataset, build_inference_loader, build_train_loader
from datasets.detreidx.scan import DatasetLayoutError
from datasets.detreidx.scan_cache import default_scan_cache_dir
from tests.helpers.data import make_tiny_cfg
from tests.helpers.files import age_tree
from tests.helpers.paths import DEMO_CONFIG


def _epoch(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_train_batches_follow_the_contract(tiny_root):
    cfg = make_tiny_cfg(tiny_root)
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
    cfg0 = make_tiny_cfg(tiny_root)
    ds = build_dataset(cfg0)
    first = _epoch(build_train_loader(cfg0, ds), 1)
    again = _epoch(build_train_loader(cfg0, ds), 1)
    workers = _epoch(build_train_loader(make_tiny_cfg(tiny_root, "DATALOADER.NUM_WORKERS", "2"), ds), 1)
    for a, b, c in zip(first, again, workers):
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    other_epoch = _epoch(build_train_loader(cfg0, ds), 2)
    assert any(not torch.equal(a["frames"], b["frames"]) for a, b in zip(first, other_epoch))


def test_ddp_ranks_split_each_batch(tiny_root):
    cfg = make_tiny_cfg(tiny_root, "SOLVER.IMS_PER_BATCH", "8")
    ds = build_dataset(cfg)
    whole = _epoch(build_train_loader(cfg, ds), 0)
    ranks = [_epoch(build_train_loader(cfg, ds, rank=r, world_size=2), 0) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for step, batch in enumerate(whole):
        joined = torch.cat([ranks[0][step]["indices"], ranks[1][step]["indices"]])
        assert torch.equal(joined, batch["indices"]) and ranks[0][step]["frames"].shape[0] == 4


def test_shuffle_frames_is_train_only(tiny_root):
    cfg = make_tiny_cfg(tiny_root, "INPUT.SHUFFLE_FRAMES", "True", "INPUT.ERASE_PROB", "0.0", "INPUT.FLIP_PROB", "0.0",
                   "INPUT.HUE_PROB", "0.0", "DATALOADER.SEQ_LEN", "8")
    ds = build_dataset(cfg)
    loader = build_train_loader(cfg, ds)
    plain = build_train_loader(make_tiny_cfg(tiny_root, "INPUT.ERASE_PROB", "0.0", "INPUT.FLIP_PROB", "0.0",
                                        "INPUT.HUE_PROB", "0.0", "DATALOADER.SEQ_LEN", "8"), ds)
    assert loader.dataset.shuffle_frames and not plain.dataset.shuffle_frames
    assert not hasattr(build_inference_loader(cfg, ds.train).dataset, "shuffle_frames")
    index, seed = next(iter(loader.batch_sampler))[0]
    shuffled, ordered = loader.dataset[(index, seed)]["frames"], plain.dataset[(index, seed)]["frames"]
    # Same frames, in another order (unless the tracklet is short and padded with repeats).
    assert sorted(f.sum().item() for f in shuffled) == pytest.approx(sorted(f.sum().item() for f in ordered))


def test_inference_loader_even_and_dense(tiny_root):
    cfg = make_tiny_cfg(tiny_root)
    ds = build_dataset(cfg)
    gallery = ds.cases[1].gallery
    even = list(build_inference_loader(cfg, gallery))
    assert set(even[0]) == {"frames", "camids", "views", "indices"}
    assert torch.cat([b["indices"] for b in even]).tolist() == list(range(len(gallery)))
    assert all(b["frames"].shape[1:] == (4, 3, 16, 8) for b in even)
    again = list(build_inference_loader(cfg, gallery))
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(even, again))

    dense_loader = build_inference_loader(make_tiny_cfg(tiny_root, "TEST.SAMPLING", "dense"), gallery)
    indices = torch.cat([b["indices"] for b in dense_loader]).tolist()
    expected = [i for i, t in enumerate(gallery) for _ in range(-(-t.num_frames // 4))]
    assert indices == expected
    with pytest.raises(ValueError, match="TEST.SAMPLING"):
        build_inference_loader(make_tiny_cfg(tiny_root, "TEST.SAMPLING", "all"), gallery)


def test_val_and_memory_loaders(tiny_root):
    cfg = make_tiny_cfg(tiny_root, "DATASETS.VAL_IDS", "2")
    ds = build_dataset(cfg)
    assert ds.num_train_pids == 4 and set(ds.val) == {1, 2, 3}
    memory = build_inference_loader(cfg, ds.train)
    assert sum(b["frames"].shape[0] for b in memory) == len(ds.train)
    assert next(iter(build_inference_loader(cfg, ds.val[3].query)))["frames"].shape[1] == 4


@pytest.mark.slow
def test_synthetic_if_missing_generates_once(tmp_path):
    root = str(tmp_path / "data" / "xfd")
    opts = ["DATASETS.SYNTHETIC_IF_MISSING", "True", "DATASETS.SYNTHETIC_IDS", "2", "DATASETS.SYNTHETIC_TEST_IDS", "1"]
    ds = build_dataset(make_tiny_cfg(root, *opts))
    assert ds.num_train_pids == 2 and set(ds.cases) == {1, 2, 3}
    assert sorted(os.listdir(tmp_path / "data")) == ["xfd"], "no temporary folder may be left behind"
    stamp = os.stat(os.path.join(root, "synthetic_xfd.json")).st_mtime_ns
    build_dataset(make_tiny_cfg(root, *opts))
    assert os.stat(os.path.join(root, "synthetic_xfd.json")).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset(make_tiny_cfg(str(tmp_path / "absent")))


def test_missing_root_without_generation_names_the_nearest_folder(tmp_path):
    typo = tmp_path / "a" / "b" / "xfd"
    with pytest.raises(DatasetLayoutError, match=f"nearest existing folder: {tmp_path}\\)"):
        build_dataset(load_config(DEMO_CONFIG, ["DATASETS.ROOT_DIR", str(typo)]))
    assert not (tmp_path / "a").exists()


def test_build_dataset_passes_the_cache_folder_and_the_junk_rule(tiny_root_copy, tmp_path):
    cache = str(tmp_path / "cache")
    pid_dir = os.path.join(tiny_root_copy, "train", "0004")
    shutil.copytree(os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0]), os.path.join(pid_dir, "0004_name"))
    age_tree(tiny_root_copy)
    with pytest.raises(DatasetLayoutError, match="0004_name"):
        build_dataset(make_tiny_cfg(tiny_root_copy, "DATASETS.SCAN_CACHE_DIR", cache))
    dataset = build_dataset(make_tiny_cfg(tiny_root_copy, "DATASETS.SCAN_CACHE_DIR", cache, "TEST.JUNK_RULE", "camera"))
    assert any(t.name == "0004_name" for t in dataset.train) and len(os.listdir(cache)) == 1
    assert default_scan_cache_dir().endswith(os.path.join("sas_vpreid", "scan"))
