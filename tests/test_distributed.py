"""CPU threads (utils/distributed.py): the automatic intra-op thread count leaves the loader workers their cores
(also for several ranks on one host), and SAS_CPU_THREADS overrides it."""
import os

import pytest
import torch

from configs import load_config
from utils.distributed import auto_cpu_threads, configure_cpu_threads


def test_auto_cpu_threads_leave_the_loader_workers_their_cores():
    assert auto_cpu_threads(2, 2) == 1            # the demo on 2 cores: measured 2-4x faster than 2 threads
    assert auto_cpu_threads(2, 0) == 2
    assert auto_cpu_threads(16, 4) == 12
    assert auto_cpu_threads(16, 4, processes=2) == 4   # two ranks on one host share the cores
    assert auto_cpu_threads(2, 8) == 1
    assert auto_cpu_threads(16, 0, default=8) == 8


def test_configure_cpu_threads_follows_the_policy_or_sas_cpu_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = load_config(None, ["DATALOADER.NUM_WORKERS", "2"])
    monkeypatch.delenv("SAS_CPU_THREADS", raising=False)
    assert configure_cpu_threads(cfg).startswith("1 intra-op thread: 2 cores - 2 loader workers") and calls == [1]
    monkeypatch.setenv("SAS_CPU_THREADS", "3")
    configure_cpu_threads(cfg)
    assert calls == [1, 3]
    monkeypatch.setenv("SAS_CPU_THREADS", "all")
    assert "torch default" in configure_cpu_threads(cfg) and calls == [1, 3]
    monkeypatch.setenv("SAS_CPU_THREADS", "many")
    with pytest.raises(ValueError, match="SAS_CPU_THREADS"):
        configure_cpu_threads(cfg)
