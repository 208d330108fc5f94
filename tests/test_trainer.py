"""The memory rebuild and the epoch seeds of the training loop:
- the rebuild encodes each training tracklet as one clip of DATALOADER.SEQ_LEN evenly spaced frames
  whatever TEST.SAMPLING / TEST.SEQ_LEN say, and logs its time (issue 9 point 5);
- MODEL.MEMORY.REBUILD_PERIOD 2 rebuilds at epochs 1, 3, ... (issue 13 point 8);
- DDP ranks draw different random numbers: the rank is part of the epoch seed (issue 13 point 8)."""
import logging
import random

import numpy as np
import pytest
import torch

import processor.trainer as trainer_module
from processor.trainer import Trainer
from tests.datasets_fixtures import make_tiny_root, tiny_cfg

SEQ_LEN = 4


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("rebuild_data"))


def make_trainer(root, output_dir, *opts):
    cfg = tiny_cfg(root, "DATALOADER.SEQ_LEN", str(SEQ_LEN), "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]",
                   "SOLVER.EVAL_PERIOD", "0",
                   "TEST.EVAL_AFTER_TRAINING", "False", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.STEPS", "[10]",
                   "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", str(output_dir), *opts)
    cfg.freeze()
    return Trainer(cfg, torch.device("cpu"), str(output_dir))


def test_rebuild_encodes_seq_len_even_frames_per_tracklet_whatever_test_sampling(tiny_root, tmp_path, caplog):
    trainer = make_trainer(tiny_root, tmp_path / "run", "TEST.SAMPLING", "dense", "TEST.SEQ_LEN", "16")
    clip_lengths = []
    model_forward = trainer.model.forward

    def counting_forward(frames, *args, **kwargs):
        clip_lengths.extend([frames.shape[1]] * frames.shape[0])
        return model_forward(frames, *args, **kwargs)

    trainer.model.forward = counting_forward
    with caplog.at_level(logging.DEBUG, logger="processor.trainer"):
        trainer.rebuild_memory()
    first = trainer.model.memory.proxies.clone()
    count = len(trainer.dataset.train)
    # One clip per tracklet (dense sampling would give several for long tracklets), SEQ_LEN frames each.
    assert clip_lengths == [SEQ_LEN] * count
    assert sum(clip_lengths) == SEQ_LEN * count
    assert any("Memory rebuilt" in r.getMessage() and "s" in r.getMessage() for r in caplog.records)
    trainer.rebuild_memory()  # deterministic sampling: the same proxies again
    torch.testing.assert_close(trainer.model.memory.proxies, first)
    trainer.close()


def test_rebuild_period_two_rebuilds_at_epochs_one_and_three(tiny_root, tmp_path):
    trainer = make_trainer(tiny_root, tmp_path / "run", "MODEL.MEMORY.REBUILD_PERIOD", "2", "SOLVER.MAX_EPOCHS", "3")
    steps_per_epoch = len(trainer.train_loader)
    rebuilt_at = []
    trainer.rebuild_memory = lambda: rebuilt_at.append(trainer.global_step // steps_per_epoch + 1)
    trainer.fit()
    trainer.close()
    assert rebuilt_at == [1, 3]


class _Stop(Exception):
    pass


def test_ranks_draw_different_random_numbers_and_each_rank_is_reproducible(tiny_root, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_root, tmp_path / "run")
    seeded = trainer_module.seed_everything
    draws = []

    def seed_then_draw(seed):
        seeded(seed)
        draws.append((torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]))
        raise _Stop  # the epoch's seed is all this test needs

    monkeypatch.setattr(trainer_module, "seed_everything", seed_then_draw)
    for rank in (0, 1, 0):
        trainer.rank = rank
        with pytest.raises(_Stop):
            trainer.train_epoch(3)
    trainer.close()
    rank0, rank1, rank0_again = draws
    assert rank0 == rank0_again
    for a, b in zip(rank0, rank1):  # torch, numpy and random each differ between ranks
        assert a != b
