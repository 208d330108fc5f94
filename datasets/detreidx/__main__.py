"""``python -m datasets.detreidx --root DIR``: scan a DetReIDX root and print its statistics table,
including what the scanner understood of the names. Exit 2 with one ``error:`` line when the root does
not follow the layout."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.scan import DatasetLayoutError
from utils.protocol import JUNK_RULES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.detreidx",
                                     description="Scan a DetReIDX root and print its statistics table.")
    parser.add_argument("--root", required=True, help="dataset root (train/ and case*/ folders)")
    parser.add_argument("--val-ids", type=int, default=0, help="train identities held out as validation (DATASETS.VAL_IDS)")
    parser.add_argument("--unknown-names-as-ground", action="store_true", help="treat unparseable frame names as ground frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    parser.add_argument("--junk-rule", choices=JUNK_RULES, default="tracklet",
                        help="TEST.JUNK_RULE: 'tracklet' needs {pid}_{tid} tracklet folder names")
    parser.add_argument("--scan-cache", default="", help="scan cache folder (DATASETS.SCAN_CACHE_DIR; 'auto' = user cache; default: none)")
    args = parser.parse_args(argv)
    try:
        dataset = DetReIDX(args.root, val_ids=args.val_ids, unknown_names_as_ground=args.unknown_names_as_ground,
                           seed=args.seed, junk_rule=args.junk_rule, scan_cache_dir=args.scan_cache)
    except DatasetLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"DetReIDX at {dataset.root}")
    print(dataset.statistics_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
