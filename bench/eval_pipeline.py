"""End-to-end three-case evaluation vs the backbone's forward pass over the same tracklets, same run.

The end-to-end time covers everything ``evaluate_all_cases.py`` does after the model is built:
frame decoding and transforms, the full SAS model, distances, ranking, metrics and the CSV. The
reference is the CLIP backbone alone over the same unique tracklets' clips, already decoded in
memory. Their ratio is the overhead of our pipeline (target <= 1.3).

    python bench/eval_pipeline.py [--backbone ViT-B-16] [--test-ids 4] [--seq-len 8]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import load_config  # noqa: E402
from datasets.build import build_dataset, build_inference_loader  # noqa: E402
from model.build import build_model  # noqa: E402
from processor.evaluation import run_case_evaluation  # noqa: E402
from processor.encoding import unique_tracklets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--test-ids", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "xfd")
        subprocess.run([sys.executable, "-m", "datasets.synthetic", "--root", data, "--ids", "4",
                        "--test-ids", str(args.test_ids), "--seed", "0"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        size = f"[{args.height},{args.width}]"
        cfg = load_config(None, [
            "MODEL.BACKBONE", args.backbone, "MODEL.DEVICE", "cpu", "SOLVER.AMP", "off",
            "INPUT.SIZE_TEST", size, "INPUT.SIZE_TRAIN", size, "DATASETS.ROOT_DIR", data,
            "TEST.SEQ_LEN", str(args.seq_len), "TEST.IMS_PER_BATCH", str(args.batch),
            "DATALOADER.NUM_WORKERS", str(args.workers), "DATALOADER.PIN_MEMORY", "False",
            "OUTPUT_DIR", os.path.join(tmp, "out"),
        ])
        dataset = build_dataset(cfg)
        model = build_model(cfg, num_classes=dataset.num_train_pids, num_cameras=dataset.num_cameras).eval()
        tracklets, _ = unique_tracklets(dataset.cases)
        device = torch.device("cpu")

        # Reference input: the same clips, decoded once and kept in memory (not timed).
        clips = [(b["frames"], b["camids"], b["views"]) for b in build_inference_loader(cfg, tracklets)]

        @torch.no_grad()
        def backbone_only() -> None:
            for frames, camids, views in clips:
                b, t = frames.shape[:2]
                model.backbone(frames.flatten(0, 1), camids.repeat_interleave(t), views.repeat_interleave(t))

        def end_to_end() -> None:
            run_case_evaluation(cfg, model, dataset.cases, device, cfg.OUTPUT_DIR,
                                csv_path=os.path.join(cfg.OUTPUT_DIR, "submission.csv"), condition_report=False)

        backbone_only()  # warm-up
        start = time.perf_counter()
        end_to_end()
        pipeline_s = time.perf_counter() - start
        start = time.perf_counter()
        backbone_only()
        backbone_s = time.perf_counter() - start
    print(f"{len(tracklets)} unique tracklets over cases {sorted(dataset.cases)}, {args.backbone} "
          f"{args.height}x{args.width}, {args.seq_len} frames/clip, cpu threads {torch.get_num_threads()}")
    print(f"end-to-end evaluation: {pipeline_s:.2f} s")
    print(f"backbone forward only: {backbone_s:.2f} s")
    print(f"ratio: {pipeline_s / backbone_s:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
