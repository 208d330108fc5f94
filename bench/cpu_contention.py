"""Why a CPU run slows down 20-100x when other processes share the cores, and what fixes it.

    python -m bench.cpu_contention [--root DIR] [--epochs 2] [--competitors 1] [--competitor torch|python]
                                   [--settings a,b,...] [--small]

For each setting (a child process each, since OpenMP reads its environment once), the demo's real
training loop (``Trainer.train_epoch``: memory rebuild, loader workers, steps) runs on the demo-sized
synthetic dataset. Round after round, each setting in turn trains one epoch on quiet cores and one
while ``--competitors`` CPU-bound processes started by this script run alongside (``torch``: another
training job, torch's default threads doing matrix products; ``python``: a busy loop), so a change
in the machine's own load hits every setting alike. It prints the median seconds per epoch quiet
and loaded, their ratio, the speed-up over the ``before`` setting and the CPU seconds the training
process itself burnt per epoch (threads spinning at OpenMP barriers show up there), side by side. Sharing the cores with one competitor explains
a ratio near (cores + 1) / cores ... 2; far more than that is threads waiting for each other.

Settings (``--settings``; default all):
  before        torch's defaults (one intra-op thread per core) with the demo's 2 loader workers,
                and the worker/thread settings of the code before the fix (``SAS_CPU_THREADS=all``)
  after         the project's CPU thread policy (``utils.distributed.configure_cpu_threads``)
  threads1      1 intra-op thread, 2 workers, OpenMP default wait policy
  passive       torch's default thread count with OMP_WAIT_POLICY=PASSIVE (no spinning at barriers)
  workers0      torch's default thread count, no loader workers
  t1w0          1 intra-op thread, no loader workers
Without ``--root`` the dataset is generated under a temporary folder first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# name -> (environment changes, KEY VALUE overrides)
SETTINGS = {
    "before": ({"SAS_CPU_THREADS": "all"}, []),
    "after": ({}, []),
    "threads1": ({"SAS_CPU_THREADS": "1"}, []),
    "passive": ({"SAS_CPU_THREADS": "all", "OMP_WAIT_POLICY": "PASSIVE"}, []),
    "workers0": ({"SAS_CPU_THREADS": "all"}, ["DATALOADER.NUM_WORKERS", "0"]),
    "t1w0": ({"SAS_CPU_THREADS": "1"}, ["DATALOADER.NUM_WORKERS", "0"]),
}
# --small: the demo model and data at 64x32 pixels and 4-frame clips (about 8x less work per step).
SMALL = ["INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "DATALOADER.SEQ_LEN", "4", "TEST.SEQ_LEN", "4"]
COMPETITORS = {
    # another training job: torch's default thread count, matrix products back to back
    "torch": "import torch\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)\n",
    # a plain single-threaded CPU hog
    "python": "while True:\n    pass\n",
}


def child(args) -> None:
    """One setting: build the trainer, train a warm-up epoch, then train one epoch per command read from
    stdin ("quiet" or "loaded"), answering "TIME <wall s> <CPU s of this process>"."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from configs import load_config
    from processor.trainer import Trainer
    from utils.distributed import configure_cpu_threads

    cfg = load_config(os.path.join(ROOT, "configs", "demo.yml"), [
        "DATASETS.ROOT_DIR", args.root, "DATASETS.SYNTHETIC_IF_MISSING", "False", "DATASETS.SCAN_CACHE_DIR", "",
        "OUTPUT_DIR", args.output, "SOLVER.EVAL_PERIOD", "0", "SOLVER.LOG_PERIOD", "1000",
        "SOLVER.MAX_EPOCHS", "1000", *args.opts,
    ])
    policy = configure_cpu_threads(cfg)
    trainer = Trainer(cfg, torch.device("cpu"), args.output)
    trainer.train_epoch(1)   # warm-up: first forks, allocator, caches
    print(f"READY {torch.get_num_threads()} {int(cfg.DATALOADER.NUM_WORKERS)} {policy}", flush=True)
    epoch = 2
    for line in sys.stdin:
        mode = line.strip()
        if mode not in ("quiet", "loaded"):
            break
        count = args.competitors if mode == "loaded" else 0
        competitors = [subprocess.Popen([sys.executable, "-c", COMPETITORS[args.competitor]]) for _ in range(count)]
        try:
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.train_epoch(epoch)
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        finally:
            for proc in competitors:
                proc.kill()
                proc.wait()
        epoch += 1
        print(f"TIME {wall:.3f} {cpu:.3f}", flush=True)
    trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="", help="dataset root (default: demo-sized synthetic data in a temp folder)")
    parser.add_argument("--epochs", type=int, default=2, help="quiet/loaded epoch pairs per setting")
    parser.add_argument("--competitors", type=int, default=1, help="CPU-bound processes during loaded epochs")
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch",
                        help="torch: another training job (default threads, matmuls); python: a busy loop")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    parser.add_argument("--small", action="store_true", help="64x32 frames and 4-frame clips (a quicker run)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = tempfile.mkdtemp(prefix="cpu_contention_")
    root = args.root or os.path.join(work, "xfd")
    if not args.root:
        from datasets.synthetic import SyntheticConfig, generate_dataset

        generate_dataset(root, SyntheticConfig(num_ids=30, num_test_ids=20, seed=0))
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores; load average before the runs {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(a busy machine makes the quiet column slower too); {args.competitors} competing {args.competitor} "
          f"process(es); {args.epochs} rounds of one quiet and one loaded epoch per setting, settings in turn",
          flush=True)
    names = args.settings.split(",")
    children = {}
    for name in names:   # one process per setting, all started first; they train in turn
        env_changes, opts = SETTINGS[name]
        opts = opts + (SMALL if args.small else [])
        env = dict(os.environ, HF_HUB_OFFLINE="1", **env_changes)
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(key, None)
        if "SAS_CPU_THREADS" not in env_changes:
            env.pop("SAS_CPU_THREADS", None)
        cmd = [sys.executable, "-m", "bench.cpu_contention", "--child", "--root", root, "--output",
               os.path.join(work, f"run_{name}"), "--competitors", str(args.competitors), "--competitor",
               args.competitor, "--", *opts]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = proc.stdout.readline().split(maxsplit=3)   # one at a time: warm-ups do not overlap
        if not ready or ready[0] != "READY":
            print(f"{name}: failed to start", flush=True)
            proc.kill()
            continue
        children[name] = (proc, int(ready[1]), int(ready[2]), ready[3].strip())
    times = {name: {"quiet": [], "loaded": [], "cpu_quiet": [], "cpu_loaded": []} for name in children}
    for _ in range(args.epochs):
        for name, (proc, *_rest) in children.items():
            for mode in ("quiet", "loaded"):
                proc.stdin.write(mode + "\n")
                proc.stdin.flush()
                wall, cpu = proc.stdout.readline().split()[1:3]
                times[name][mode].append(float(wall))
                times[name][f"cpu_{mode}"].append(float(cpu))
    for proc, *_rest in children.values():
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        proc.wait()
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print("\nsetting    threads workers  quiet s/epoch  loaded s/epoch  loaded/quiet  vs before: quiet  loaded"
          "   CPU s/epoch quiet loaded")
    base = times.get("before")
    for name, (_, threads, workers, policy) in children.items():
        t = times[name]
        quiet, loaded = median(t["quiet"]), median(t["loaded"])
        versus = (f"{median(base['quiet']) / quiet:>10.1f}x {median(base['loaded']) / loaded:>6.1f}x" if base
                  else " " * 18)
        print(f"{name:<10} {threads:>7} {workers:>7} {quiet:>14.1f} {loaded:>15.1f} {loaded / quiet:>13.1f}x "
              f"{versus} {median(t['cpu_quiet']):>12.1f} {median(t['cpu_loaded']):>6.1f}")
    print("(medians; 'vs before' is how many times faster than the 'before' setting; per epoch, all values: "
          + "; ".join(f"{n} quiet {' '.join(f'{v:.1f}' for v in t['quiet'])} loaded "
                      f"{' '.join(f'{v:.1f}' for v in t['loaded'])}" for n, t in times.items()) + ")")
    load = os.getloadavg()
    print(f"load average after the runs {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
