"""Run under torchrun by tests/test_train_cli.py: train one short epoch with DDP (gloo on CPU) and
record, per rank, the dataset indices of every batch it trained on."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository

import processor.trainer as trainer_module  # noqa: E402
import train  # noqa: E402


class RecordingLoader:
    """Wraps the train loader and remembers the dataset indices of each batch it yields."""

    def __init__(self, loader):
        self.loader = loader
        self.batch_sampler = loader.batch_sampler
        self.dataset = loader.dataset
        self.batches = []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.batches.append(batch["indices"].tolist())
            yield batch


def main():
    out, argv = sys.argv[1], sys.argv[2:]
    recorders = []
    real_init = trainer_module.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.train_loader = RecordingLoader(self.train_loader)
        recorders.append(self.train_loader)

    trainer_module.Trainer.__init__ = init
    train.main(argv)
    recorder = recorders[0]
    with open(os.path.join(out, f"seen_rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({"batches": recorder.batches, "promised_steps": len(recorder)}, f)


if __name__ == "__main__":
    main()
