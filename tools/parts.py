"""What each part of the test embedding is worth: mAP-3 of every part alone, of the whole embedding, and
of the whole embedding without each part, on the validation split and the test cases.

``python -m tools.parts --model_path CKPT [--splits val,test] [KEY VALUE ...]``

One encoding per split; the rankings come from slices of the embedding (cosine distance, the
checkpoint's scoring rules), so the figures of the whole embedding equal evaluate_all_cases.py's. The
validation split is rebuilt with the checkpoint's SOLVER.SEED, as during training. Prints a table
(and the clothes-changed mAP where the data labels outfits) and writes it as JSON with --output_file.
"""
from __future__ import annotations

import logging
import os

import torch

from utils.cli import make_parser, parse_command_line, run_main

logger = logging.getLogger("parts")


def part_slices(model) -> dict[str, slice]:
    """{part: slice of the embedding} in the order of ``model.embed_parts``."""
    widths = {"cls": model.backbone.width, "proj": model.backbone.proj_dim, "tp": model.backbone.width,
              "shape": model.bottleneck_shape.num_features if hasattr(model, "bottleneck_shape") else 0}
    slices, start = {}, 0
    for part in model.embed_parts:
        slices[part] = slice(start, start + widths[part])
        start += widths[part]
    if start != model.embedding_dim:
        raise RuntimeError(f"embedding parts {model.embed_parts} add up to {start}, not {model.embedding_dim}")
    return slices


def score(cfg, cases, features, index, device, outfits) -> dict:
    """mAP-3, mean R1 and clothes-changed mAP of ``features`` (N, d) on ``cases``."""
    from processor.evaluation import evaluate_cases, summarize
    from utils.report import clothes_changed_summary

    results = evaluate_cases(cfg, cases, features, index, device)
    summary = summarize(results, cfg.TEST.JUNK_RULE, cfg.TEST.AP_MODE)
    clothes = clothes_changed_summary(results, outfits, cfg.TEST.AP_MODE) or {}
    return {"mAP-3": summary.get("mAP-3"), "R1": summary.get("mean_R1"),
            "clothes changed mAP": (clothes.get("clothes changed") or {}).get("mAP")}


def part_table(cfg, model, cases, device, outfits) -> dict[str, dict]:
    """{"all": ..., "<part>": ..., "all - <part>": ...} figures for one split's ``cases``."""
    from processor.encoding import encode_tracklets, unique_tracklets

    tracklets, index = unique_tracklets(cases)
    features = encode_tracklets(model, cfg, tracklets, device, desc="parts")["embedding"]
    slices = part_slices(model)
    table = {"all": score(cfg, cases, features, index, device, outfits)}
    for part, cut in slices.items():
        table[part] = score(cfg, cases, features[:, cut], index, device, outfits)
    if len(slices) > 2:
        for part, cut in slices.items():
            keep = torch.cat([features[:, s] for p, s in slices.items() if p != part], dim=1)
            table[f"all - {part}"] = score(cfg, cases, keep, index, device, outfits)
    return table


def format_table(tables: dict[str, dict[str, dict]]) -> str:
    fmt = lambda v: "     -" if v is None else f"{v:6.2f}"  # noqa: E731
    lines = []
    for split, table in tables.items():
        lines.append(f"{split}: {'embedding':<14} {'mAP-3':>6} {'R1':>6} {'clothes changed mAP':>20}")
        for name, row in table.items():
            lines.append(f"{'':{len(split) + 2}}{name:<14} {fmt(row['mAP-3'])} {fmt(row['R1'])} "
                         f"{fmt(row['clothes changed mAP']):>20}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--model_path", required=True, help="checkpoint written by train.py")
    parser.add_argument("--splits", default="val,test", help="comma-separated: val, test")
    parser.add_argument("--output_file", default="", help="write the figures as JSON here")
    args = parse_command_line(parser, argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or set(splits) - {"val", "test"}:
        parser.error(f"--splits takes val and/or test, got {args.splits!r}")

    from configs import PRETRAINED_KEYS, clear_keys, config_from_yaml_text
    from datasets.build import build_dataset
    from datasets.detreidx.names import standard_camera_index
    from datasets.synthetic import load_tracklet_outfits
    from processor.inference import model_from_checkpoint
    from utils.checkpoint import load_train_checkpoint
    from processor.evaluation import write_json

    state = load_train_checkpoint(args.model_path)
    cfg = config_from_yaml_text(state["config"], args.opts)
    cfg.defrost()
    clear_keys(cfg, PRETRAINED_KEYS)
    cfg.DATASETS.SYNTHETIC_IF_MISSING = False
    cfg.freeze()
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu" else "cpu")
    meta = state["meta"]
    camera_index = meta.get("camera_index") or standard_camera_index(num_cameras=int(meta["num_cameras"]))
    dataset = build_dataset(cfg, camera_index=camera_index)
    model = model_from_checkpoint(state, cfg, args.model_path).to(device).eval()
    outfits = load_tracklet_outfits(cfg.DATASETS.ROOT_DIR)
    tables = {}
    for split in splits:
        cases = dataset.val if split == "val" else dataset.cases
        if not cases:
            logger.warning("No %s split in %s; skipped", split, cfg.DATASETS.ROOT_DIR)
            continue
        tables[split] = part_table(cfg, model, cases, device, outfits)
    print(format_table(tables))
    if args.output_file:
        write_json(args.output_file, {"checkpoint": os.path.abspath(args.model_path), "parts": tables})
    return tables


if __name__ == "__main__":
    run_main(main)
