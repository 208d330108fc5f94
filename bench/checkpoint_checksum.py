"""Benchmark: what the checkpoint checksum costs, side by side in one run.

    python bench/checkpoint_checksum.py                 # ViT-L/14-sized: 430M fp32 params + Adam state (~5.2 GB)
    python bench/checkpoint_checksum.py --params 50e6   # smaller, a few seconds
    python bench/checkpoint_checksum.py --no-adam       # model weights only

The state has what ``Trainer.state_dict`` saves for a ViT-L/14 SAS model: the model's fp32 tensors
and Adam's two moments (exp_avg, exp_avg_sq) per trained tensor (the CLIP encoder trains at a low LR,
so nearly every parameter has them). Tensors are 4M elements each (16 MiB), the size of ViT-L's
MLP weights. Compared: plain ``torch.save`` / ``torch.load(weights_only=True)`` against
``utils.checkpoint.save_checkpoint`` / ``load_checkpoint`` (checksum written / verified), and the
verification alone. Loads read a file the page cache already holds (as right after a save, or on
the second load); each load is timed twice, alternating, best kept. Needs about twice the file
size in free disk and the file size in memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.checkpoint import load_checkpoint, save_checkpoint, verify_checksum  # noqa: E402

TENSOR_ELEMENTS = 4 * 2**20


def build_state(params: float, adam: bool) -> dict:
    count = max(1, round(params / TENSOR_ELEMENTS))
    model = {f"block{i}.weight": torch.rand(TENSOR_ELEMENTS) for i in range(count)}
    state = {"model": model, "epoch": 10, "config": "MODEL:\n  BACKBONE: ViT-L-14\n"}
    if adam:
        state["optimizer"] = {
            "state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.rand(TENSOR_ELEMENTS),
                          "exp_avg_sq": torch.rand(TENSOR_ELEMENTS)} for i in range(count)},
            "param_groups": [{"lr": 5e-6, "params": list(range(count))}],
        }
    return state


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=430e6, help="model parameters (default: ViT-L/14 SAS, 430M)")
    parser.add_argument("--no-adam", action="store_true", help="model weights only (no optimizer state)")
    parser.add_argument("--dir", default=None, help="folder for the two files (default: a temp folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        plain, checked = os.path.join(folder, "plain.pth"), os.path.join(folder, "checked.pth")
        state = build_state(args.params, not args.no_adam)
        save_plain = timed(lambda: torch.save(state, plain))
        save_checked = timed(lambda: save_checkpoint(state, checked))
        del state
        size = os.path.getsize(checked)
        loads_plain, loads_checked, verifies = [], [], []
        for _ in range(2):
            loads_plain.append(timed(lambda: torch.load(plain, map_location="cpu", weights_only=True)))
            loads_checked.append(timed(lambda: load_checkpoint(checked)))
            verifies.append(timed(lambda: verify_checksum(checked)))
        load_plain, load_checked, verify = min(loads_plain), min(loads_checked), min(verifies)
        print(f"file: {size / 1e9:.2f} GB ({args.params / 1e6:.0f}M params{'' if args.no_adam else ' + Adam state'}), "
              f"{os.cpu_count()} CPUs")
        print(f"save: torch.save {save_plain:.2f} s, save_checkpoint {save_checked:.2f} s "
              f"(+{save_checked - save_plain:.2f} s, x{save_checked / save_plain:.2f})")
        print(f"load: torch.load {load_plain:.2f} s, load_checkpoint {load_checked:.2f} s "
              f"(+{load_checked - load_plain:.2f} s, x{load_checked / load_plain:.2f})")
        print(f"verify_checksum alone: {verify:.2f} s ({size / verify / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    main()
