"""What the memory holds after the epoch-1 rebuild, with each rebuild rule (issue 18 point 6).

``python -m bench.memory_rebuild [--config configs/ablations/02_memory.yml] [KEY VALUE ...]``

Builds the trainer of a config (tiny overlay) once, then for each rebuild setting rebuilds the proxies
from the untrained model and scores them against the first training batches (train mode, as the
memory loss sees them): the memory loss, how often a clip's own identity is the nearest mean proxy
(memory accuracy), and the mean cosine of a clip to its own mean proxy vs to the nearest other one.
Prints one line per setting, side by side (same model, same batches).
"""
from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F

SETTINGS = {
    "authors (batch BN, no SIE, no clip L2, blocks)": [],
    "earlier (running BN, SIE, clip L2, even)": ["MODEL.MEMORY.REBUILD_BN", "running", "MODEL.MEMORY.REBUILD_SIE", "True",
                                                 "MODEL.MEMORY.REBUILD_NORMALIZE_CLIPS", "True",
                                                 "MODEL.MEMORY.REBUILD_SAMPLING", "even"],
    "running BN only": ["MODEL.MEMORY.REBUILD_BN", "running"],
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ablations/02_memory.yml")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--checkpoint", default="", help="score the rebuild of these trained weights instead")
    parser.add_argument("opts", nargs="*")
    args = parser.parse_args(argv)
    from configs import load_config
    from processor.trainer import Trainer

    out = tempfile.mkdtemp(prefix="memory_rebuild_")
    torch.manual_seed(0)
    base = ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out, *args.opts]
    cfg = load_config(args.config, base, overlays=["configs/tiny.yml"])
    trainer = Trainer(cfg, torch.device("cpu"), out)
    model = trainer.model
    if args.checkpoint:
        from utils.checkpoint import load_model_state, load_train_checkpoint

        load_model_state(model, load_train_checkpoint(args.checkpoint)["model"], args.checkpoint)
    batches = []
    for i, batch in enumerate(trainer.train_loader):
        if i >= args.batches:
            break
        batches.append(batch)
    for name, opts in SETTINGS.items():
        setting = load_config(args.config, base + opts, overlays=["configs/tiny.yml"])
        trainer.cfg = setting
        trainer.rebuild_memory()
        proxies = model.memory.proxies[:, 0]
        model.train()
        losses, hits, own, other = [], [], [], []
        with torch.no_grad():
            for batch in batches:
                out_dict = model(batch["frames"], batch["camids"], batch["views"], batch["labels"])
                feat = out_dict["memory_feat"]
                labels = batch["labels"]
                cos = feat @ proxies.T                                      # (B, C)
                losses.append(F.cross_entropy(out_dict["memory_logits"][:, 0], labels).item())
                hits.append((cos.argmax(1) == labels).float().mean().item())
                own.append(cos.gather(1, labels[:, None]).mean().item())
                masked = cos.scatter(1, labels[:, None], -2.0)
                other.append(masked.max(1).values.mean().item())
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        print(f"{name:48s} memory loss {mean(losses):6.3f}  memory acc {100 * mean(hits):5.1f}%  "
              f"cos own {mean(own):+.3f}  cos nearest other {mean(other):+.3f}")
    trainer.close()


if __name__ == "__main__":
    main()
