"""Distributed helpers: torchrun initialisation (NCCL on CUDA, gloo on CPU), rank queries, gathers."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device_str: str) -> torch.device:
    """Resolve the device (``MODEL.DEVICE``) and, under torchrun, join the process group.

    ``auto`` picks CUDA when available. Under torchrun each process takes ``cuda:LOCAL_RANK``; the
    backend is NCCL on CUDA and gloo on CPU, so the same code path runs in CPU tests.
    """
    if device_str == "auto":
        device_str = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_str)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MODEL.DEVICE asks for CUDA but no GPU is visible; set MODEL.DEVICE cpu or auto")
    if launched_by_torchrun() and not is_distributed():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def cleanup_distributed() -> None:
    # With torch 2.14, destroying the group without a barrier first can abort the process at exit.
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (N_r, ...) of every rank along dim 0 (ranks may hold different N_r)."""
    if not is_distributed():
        return tensor
    world = get_world_size()
    local_size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(local_size) for _ in range(world)]
    dist.all_gather(sizes, local_size)
    sizes = [int(s.item()) for s in sizes]
    max_size = max(sizes)
    padded = tensor.new_zeros((max_size,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:s] for g, s in zip(gathered, sizes)], dim=0)


@torch.no_grad()
def all_gather_equal(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (N, ...) of every rank along dim 0 when every rank holds the same shape
    (the training step's per-rank batch). No size exchange, so no host sync, unlike all_gather_tensor."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def broadcast_object(obj):
    """Send a picklable object from rank 0 to every rank (for small things like paths or flags)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# ------------------------------------------------------------------ CPU threads
CPU_THREADS_ENV = "SAS_CPU_THREADS"


def auto_cpu_threads(cores: int, workers: int, processes: int = 1, default: int | None = None) -> int:
    """Intra-op threads for one training process on a CPU: the cores of its share of the machine
    (``processes`` ranks on this host) that its ``workers`` loader workers leave free, at least 1 and
    at most torch's ``default``. More threads than free cores make OpenMP's threads wait for each
    other (spinning at every op's barrier) while the workers or other processes hold the cores:
    measured 2-4x slower epochs on 2 cores (bench/cpu_contention.py; docs/training.md, CPU threads)."""
    free = cores // max(processes, 1) - workers
    threads = max(1, free)
    return min(threads, default) if default else threads


def configure_cpu_threads(cfg) -> str:
    """Intra-op threads for a run on the CPU; returns a short description for the log.

    ``SAS_CPU_THREADS``: unset or ``auto`` applies :func:`auto_cpu_threads` (cores this process may
    use, per rank on this host, minus DATALOADER.NUM_WORKERS); ``all`` keeps torch's default (one per
    core); a number sets that many.
    """
    import torch

    choice = os.environ.get(CPU_THREADS_ENV, "auto").strip().lower()
    if choice == "all":
        return f"{torch.get_num_threads()} intra-op threads (torch default, {CPU_THREADS_ENV}=all)"
    if choice not in ("", "auto"):
        try:
            threads = int(choice)
        except ValueError:
            threads = 0
        if threads < 1:
            from configs import ConfigError   # a one-line error on the command line

            raise ConfigError(f"Environment variable {CPU_THREADS_ENV}={choice!r}: expected auto, all or a thread "
                              "count >= 1 (or unset it)")
        torch.set_num_threads(threads)
        return f"{threads} intra-op threads ({CPU_THREADS_ENV}={threads})"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cores = os.cpu_count() or 1
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = auto_cpu_threads(cores, workers, ranks, torch.get_num_threads())
    torch.set_num_threads(threads)
    return (f"{threads} intra-op thread{'s' if threads > 1 else ''}: {cores} cores"
            f"{f' / {ranks} ranks' if ranks > 1 else ''} - {workers} loader workers; {CPU_THREADS_ENV} overrides")
