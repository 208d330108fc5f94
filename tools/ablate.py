"""Train a list of configs (optionally with several seeds), evaluate each, and tabulate mean ± std.

``python -m tools.ablate CFG [CFG ...] [--overlay tiny.yml] [--seeds N|S1,S2,...] [--test]
[--output_dir outputs/ablate] [--overwrite] [KEY VALUE ...]`` (``torchrun --nproc_per_node=N -m tools.ablate
...`` trains each config with DDP).

Each config trains into ``OUTPUT_DIR/<config stem>`` (``.../<stem>/seed<S>`` with several seeds; the KEY
VALUE overrides apply to every run; ``--resume`` continues interrupted runs and re-reads finished ones, so
an ablation can be split over several processes and tabulated at the end) and is scored on its validation split (``DATASETS.VAL_IDS`` > 0)
with the weights ``TEST.FINAL_WEIGHTS`` picks; ``--test`` also evaluates the test cases with those
weights (a figure to report, never to select on). ``--seeds 3`` trains every config with
``SOLVER.SEED`` 0, 1, 2 (``--seeds 0,7`` names them); one seed, the default, keeps the config's seed.

Written to ``--output_dir``: ``ablation.md`` (the command, overrides, epochs, seeds and data generator
version, then one row per config with mean ± std over seeds), ``ablation.csv`` (one line per run) and
``ablation.png`` (bars of the means with the std as error bars), next to the paper's figures (mAP-3 on
the DetReIDXV1 test set, so compare the trend between rows, not the values). Row labels name every
module a row has on, so a table with skipped rows stays readable. "clothes changed" columns are the
mAP of the clothes-changing protocol of CC-ReID benchmarks: a true match in the query's own outfit is
junk (datasets that label outfits, such as the synthetic one; "-" otherwise).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys

from utils.cli import make_parser, parse_command_line, run_main
from utils.fileio import ensure_folder

logger = logging.getLogger("ablate")

# The paper's figures (mAP-3 on the DetReIDXV1 test set) by ablation config stem: Table 3 and Table 4's TSM row.
PAPER_FIGURES = {
    "01_baseline": 30.79,
    "02_memory": 31.77,
    "03_vc_cj": 32.54,
    "04_mgtm": 32.78,
    "05_prsd": 32.89,
    "06_tsm": 32.54,
}
CONFIG_SUFFIXES = (".yml", ".yaml")
# Per-run figures (CSV columns after row/config/seed/epochs/weights) and the summary keys they come from.
METRICS = (
    ("val mAP-3", "val", "mAP-3"),
    ("val R1", "val", "mean_R1"),
    ("val clothes changed mAP", "val", "clothes_changed_mAP"),
    ("test mAP-3", "test", "mAP-3"),
    ("test clothes changed mAP", "test", "clothes_changed_mAP"),
)
RUN_COLUMNS = ("row", "config", "seed", "epochs", "weights") + tuple(m[0] for m in METRICS) + ("paper mAP-3",)
TABLE_COLUMNS = ("row", "config", "seeds") + tuple(m[0] for m in METRICS) + ("weights", "paper mAP-3")


def parse_seeds(text: str | None) -> list[int] | None:
    """"3" -> [0, 1, 2]; "0,7" -> [0, 7]; None -> None (the config's own seed)."""
    if text is None:
        return None
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds takes a count (3) or a comma-separated list (0,7), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs at least one seed and no repeats, got {text!r}")
    return seeds


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--overlay", action="append", default=[], metavar="YAML",
                        help="YAML merged on top of every config (repeatable), e.g. --overlay tiny.yml")
    parser.add_argument("--seeds", default=None, metavar="N|S1,S2",
                        help="train each config with SOLVER.SEED 0..N-1 (or the listed seeds); mean ± std per row")
    parser.add_argument("--test", action="store_true",
                        help="also evaluate the test cases with the chosen weights and report test mAP-3")
    parser.add_argument("--output_dir", default="outputs/ablate", help="runs, table and plot go here")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier runs in the output folders")
    parser.add_argument("--resume", action="store_true",
                        help="continue interrupted runs and reuse finished ones (train.py --resume auto for every run)")
    args = parse_command_line(parser, argv)
    configs = []
    while args.opts and args.opts[0].lower().endswith(CONFIG_SUFFIXES):
        configs.append(args.opts.pop(0))
    if not configs:
        parser.error("name at least one config file (e.g. configs/ablations/01_baseline.yml) before any KEY VALUE")
    if args.resume and args.overwrite:
        parser.error("--resume continues the runs in --output_dir and --overwrite replaces them: choose one")
    if "SOLVER.SEED" in args.opts[0::2] and args.seeds is not None:
        parser.error("give the seeds either with --seeds or with SOLVER.SEED, not both")
    try:
        args.seed_list = parse_seeds(args.seeds)
    except ValueError as exc:
        parser.error(str(exc))
    args.configs = configs
    return args


def config_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def row_label(cfg) -> str:
    """What the row has on, e.g. "baseline + memory + VC-CJ + MGTM + PRSD" (TSM: PRSD without its prior)."""
    modules = []
    if cfg.MODEL.MEMORY.ENABLED:
        modules.append("memory")
    if float(cfg.INPUT.HUE_PROB) > 0:
        modules.append("VC-CJ")
    if cfg.MODEL.MGTM.ENABLED:
        modules.append("MGTM")
    if cfg.MODEL.PRSD.ENABLED:
        modules.append("PRSD" if float(cfg.LOSS.SHAPE_PRIOR_WEIGHT) > 0 else "TSM (PRSD without prior)")
    return " + ".join(["baseline"] + modules)


def _summary_value(summary: dict | None, key: str):
    if not summary:
        return None
    if key == "clothes_changed_mAP":
        return ((summary.get("clothes_changed") or {}).get("clothes changed") or {}).get("mAP")
    return summary.get(key)


def run_output_dir(args, config: str, seed: int | None) -> str:
    base = os.path.join(args.output_dir, config_stem(config))
    several = args.seed_list is not None and len(args.seed_list) > 1
    return os.path.join(base, f"seed{seed}") if several else base


def train_one(config: str, args, seed: int | None = None) -> dict:
    """Train ``config`` (with ``seed``) into its run folder; -> one run row (rank 0; other ranks get {})."""
    from configs import load_config
    from processor.training_run import config_sources, resume_command, run_training

    out = run_output_dir(args, config, seed)
    opts = [*args.opts, *(["SOLVER.SEED", str(seed)] if seed is not None else []),
            "OUTPUT_DIR", out, "TEST.EVAL_AFTER_TRAINING", str(bool(args.test))]
    # The train.py command of this one run: what an interrupted run prints to continue it.
    train_argv = ["--config_file", config, *[w for o in args.overlay for w in ("--overlay", o)], *opts]
    report = run_training(load_config(config, opts, overlays=args.overlay), resume="auto" if args.resume else "",
                          overwrite=args.overwrite, sources=config_sources(config, args.overlay),
                          overrides=len(opts) // 2, resume_hint=resume_command(train_argv))
    if report.get("final_val") is None:
        return {}
    cfg = load_config(os.path.join(out, "config.yaml"))
    summaries = {"val": report.get("final_val"), "test": report.get("test")}
    chosen = report.get("final_weights", {})
    row = {
        "row": row_label(cfg), "config": config, "seed": int(cfg.SOLVER.SEED), "epochs": int(cfg.SOLVER.MAX_EPOCHS),
        "weights": f"{os.path.basename(chosen.get('checkpoint', '?'))} (epoch {chosen.get('epoch', '?')})",
        "paper mAP-3": PAPER_FIGURES.get(config_stem(config)),
    }
    for column, split, key in METRICS:
        row[column] = _summary_value(summaries[split], key)
    return row


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for no values; std None for one value)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per config (in first-run order): metrics as (mean, std), the seeds, the weights per seed."""
    rows: dict[str, dict] = {}
    for run in runs:
        row = rows.setdefault(run["config"], {"row": run["row"], "config": run["config"], "seeds": [],
                                              "weights": [], "paper mAP-3": run["paper mAP-3"], "runs": []})
        row["seeds"].append(run["seed"])
        row["weights"].append(run["weights"])
        row["runs"].append(run)
    for row in rows.values():
        for column, _, _ in METRICS:
            row[column] = mean_std(run[column] for run in row["runs"])
    return list(rows.values())


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        mean, std = value
        if mean is None:
            return "-"
        return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], header: str = "") -> str:
    lines = [header] if header else []
    lines += ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(runs: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RUN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        writer.writerow({c: "" if run[c] is None else run[c] for c in RUN_COLUMNS})
    return buffer.getvalue()


def generator_version(cfg) -> str:
    """The synthetic generator version of the data root (from its info file), or "-" for other data."""
    path = os.path.join(cfg.DATASETS.ROOT_DIR, "synthetic_xfd.json")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return "-"
    return str(info.get("generator_version", 1))


def table_header(args, runs: list[dict]) -> str:
    from configs import load_config

    cfg = load_config(os.path.join(run_output_dir(args, runs[0]["config"], runs[0]["seed"]), "config.yaml"))
    overrides = " ".join(args.opts) or "(none)"
    seeds = ", ".join(str(s) for s in args.seed_list) if args.seed_list else f"{runs[0]['seed']} (the config's)"
    return "\n".join([
        f"Ablation: `python -m tools.ablate {' '.join(args.configs)}"
        + "".join(f" --overlay {o}" for o in args.overlay) + (f" --seeds {args.seeds}" if args.seeds else "")
        + (" --test" if args.test else "") + "`",
        "",
        f"- overlays: {', '.join(args.overlay) or '(none)'}; overrides: `{overrides}`",
        f"- epochs: {cfg.SOLVER.MAX_EPOCHS}; seeds: {seeds}; weights: TEST.FINAL_WEIGHTS {cfg.TEST.FINAL_WEIGHTS} "
        f"(chosen on validation); data: {cfg.DATASETS.ROOT_DIR} (synthetic generator version "
        f"{generator_version(cfg)})",
        "- figures: mean ± sample std over seeds; val R1 = mean over cases; clothes changed = the clothes-changing "
        "protocol (same-outfit true matches are junk); paper mAP-3 = DetReIDXV1 test (Table 3, Table 4's TSM row)",
        "",
    ])


def bar_plot(rows: list[dict], path: str) -> None:
    """Grouped bars per row: val / test mAP-3 means (std as error bars) and the paper's test mAP-3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from utils.fileio import atomic_write

    x = np.arange(len(rows))
    series = [("val mAP-3 (ours)", "val mAP-3", None), ("test mAP-3 (ours)", "test mAP-3", None),
              ("val R1 (ours)", "val R1", None), ("paper mAP-3 (DetReIDXV1 test)", "paper mAP-3", "//")]
    series = [s for s in series if any(_fmt(row[s[1]]) != "-" for row in rows)]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(rows)), 4.4))
    for i, (label, key, hatch) in enumerate(series):
        values = [row[key] if isinstance(row[key], tuple) else (row[key], None) for row in rows]
        means = [v[0] if v[0] is not None else 0.0 for v in values]
        errors = [v[1] if v[1] is not None else 0.0 for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=label,
                      hatch=hatch, edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, labels=[_fmt(v[0]) for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, [row["row"].replace(" + ", "\n+ ") for row in rows], fontsize=7)
    ax.set_ylabel("%")
    ax.set_title("Ablation: ours (mean ± std over seeds) vs the paper")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=len(series))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from utils.fileio import write_text_atomic

    runs = []
    for config in args.configs:
        for seed in args.seed_list or [None]:
            run = train_one(config, args, seed)
            if run:
                runs.append(run)
    if int(os.environ.get("RANK", "0")) != 0:  # (each training run leaves the process group when it ends)
        return []
    if len(runs) != len(args.configs) * len(args.seed_list or [None]):
        sys.exit("No validation result for some config: ablations need a validation split "
                 "(DATASETS.VAL_IDS > 0, SOLVER.EVAL_PERIOD > 0)")
    rows = aggregate(runs)
    ensure_folder(args.output_dir)
    table = markdown_table(rows, table_header(args, runs))
    write_text_atomic(os.path.join(args.output_dir, "ablation.md"), table)
    write_text_atomic(os.path.join(args.output_dir, "ablation.csv"), csv_text(runs))
    bar_plot(rows, os.path.join(args.output_dir, "ablation.png"))
    print(table, end="")
    print(f"(written: {', '.join(os.path.join(args.output_dir, n) for n in ('ablation.md', 'ablation.csv', 'ablation.png'))})")
    return rows


if __name__ == "__main__":
    run_main(main)
