"""Train a list of configs one after another, evaluate each on the validation split, and tabulate.

``python -m tools.ablate CFG [CFG ...] [--overlay tiny.yml] [--output_dir outputs/ablate] [--overwrite]
[KEY VALUE ...]`` (``torchrun --nproc_per_node=N -m tools.ablate ...`` trains each config with DDP).

Each config trains into ``OUTPUT_DIR/<config stem>`` (the KEY VALUE overrides apply to every one) and
is scored on its validation split (``DATASETS.VAL_IDS`` > 0) with the weights ``TEST.FINAL_WEIGHTS``
picks. The table goes to ``ablation.md`` and ``ablation.csv``, a bar plot of mAP-3 / R1 per row to
``ablation.png``, all in ``--output_dir``, next to the paper's Table 3 figures (mAP-3 on the
DetReIDXV1 test set, so compare the trend between rows, not the values).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import sys

from tools.cli import make_parser, parse_command_line, run_main
from utils.fileio import ensure_folder

logger = logging.getLogger("ablate")

# The paper's module ablation (Table 3, mAP-3 on the DetReIDXV1 test set), by ablation config stem.
PAPER_TABLE3 = {
    "01_baseline": ("baseline", 30.79),
    "02_memory": ("+ memory / LR", 31.77),
    "03_vc_cj": ("+ VC-CJ", 32.54),
    "04_mgtm": ("+ MGTM", 32.78),
    "05_prsd": ("+ PRSD", 32.89),
}
CONFIG_SUFFIXES = (".yml", ".yaml")
COLUMNS = ("row", "config", "val mAP-3", "val R1", "weights", "paper mAP-3")


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--overlay", action="append", default=[], metavar="YAML",
                        help="YAML merged on top of every config (repeatable), e.g. --overlay tiny.yml")
    parser.add_argument("--output_dir", default="outputs/ablate", help="runs, table and plot go here")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier runs in the output folders")
    args = parse_command_line(parser, argv)
    configs = []
    while args.opts and args.opts[0].lower().endswith(CONFIG_SUFFIXES):
        configs.append(args.opts.pop(0))
    if not configs:
        parser.error("name at least one config file (e.g. configs/ablations/01_baseline.yml) before any KEY VALUE")
    args.configs = configs
    return args


def config_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def train_one(config: str, args) -> dict:
    """Train ``config`` into OUTPUT_DIR/<stem>; -> one table row (rank 0; other ranks get {})."""
    import train

    out = os.path.join(args.output_dir, config_stem(config))
    argv = ["--config_file", config, *[w for o in args.overlay for w in ("--overlay", o)],
            *(["--overwrite"] if args.overwrite else []),
            *args.opts, "OUTPUT_DIR", out, "TEST.EVAL_AFTER_TRAINING", "False"]
    report = train.main(argv)
    summary = report.get("final_val")
    if summary is None:
        return {}
    label, paper = PAPER_TABLE3.get(config_stem(config), (config_stem(config), None))
    chosen = report.get("final_weights", {})
    return {
        "row": label, "config": config, "val mAP-3": summary.get("mAP-3"), "val R1": summary.get("mean_R1"),
        "weights": f"{os.path.basename(chosen.get('checkpoint', '?'))} (epoch {chosen.get('epoch', '?')})",
        "paper mAP-3": paper,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row[c] is None else row[c] for c in COLUMNS})
    return buffer.getvalue()


def bar_plot(rows: list[dict], path: str) -> None:
    """Grouped bars per row: our validation mAP-3 and R1, and the paper's test mAP-3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from utils.checkpoint import atomic_write

    x = np.arange(len(rows))
    series = [("val mAP-3 (ours)", "val mAP-3", None), ("val R1 (ours)", "val R1", None),
              ("paper mAP-3 (DetReIDXV1 test)", "paper mAP-3", "//")]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows)), 4.0))
    for i, (label, key, hatch) in enumerate(series):
        values = [row[key] if row[key] is not None else 0.0 for row in rows]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, hatch=hatch,
                      edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, labels=[_fmt(row[key]) for row in rows], fontsize=7, padding=1)
    ax.set_xticks(x, [row["row"] for row in rows], rotation=15)
    ax.set_ylabel("%")
    ax.set_title("Ablation: ours on the validation split vs the paper's Table 3")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(series))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from utils.checkpoint import write_text_atomic

    rows = []
    for config in args.configs:
        row = train_one(config, args)
        if row:
            rows.append(row)
    if int(os.environ.get("RANK", "0")) != 0:  # (each training run leaves the process group when it ends)
        return rows
    if len(rows) != len(args.configs):
        sys.exit("No validation result for some config: ablations need a validation split "
                 "(DATASETS.VAL_IDS > 0, SOLVER.EVAL_PERIOD > 0)")
    ensure_folder(args.output_dir)
    table = markdown_table(rows)
    write_text_atomic(os.path.join(args.output_dir, "ablation.md"), table)
    write_text_atomic(os.path.join(args.output_dir, "ablation.csv"), csv_text(rows))
    bar_plot(rows, os.path.join(args.output_dir, "ablation.png"))
    print(table, end="")
    print(f"(written: {', '.join(os.path.join(args.output_dir, n) for n in ('ablation.md', 'ablation.csv', 'ablation.png'))})")
    return rows


if __name__ == "__main__":
    run_main(main)
