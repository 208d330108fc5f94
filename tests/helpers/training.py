"""Shared tiny training setup for the end-to-end tests (synthetic data generated once per session)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yml")


def tiny_opts(data_root: str, output_dir: str, epochs: int = 2, **extra) -> list[str]:
    """Overrides that shrink the demo to seconds per epoch on 2 CPU cores."""
    opts = {
        "DATASETS.ROOT_DIR": data_root,
        "DATASETS.SCAN_CACHE_DIR": "",   # tests never write the user's scan cache
        # A command-line root gets synthetic data only when asked for on the command line too.
        "DATASETS.SYNTHETIC_IF_MISSING": "True",
        "DATASETS.SYNTHETIC_IDS": "8",
        "DATASETS.SYNTHETIC_TEST_IDS": "4",
        "DATASETS.VAL_IDS": "2",
        "DATALOADER.NUM_WORKERS": "0",
        "INPUT.SIZE_TRAIN": "[64,32]",
        "INPUT.SIZE_TEST": "[64,32]",
        "DATALOADER.SEQ_LEN": "4",
        "TEST.SEQ_LEN": "4",
        "SOLVER.IMS_PER_BATCH": "8",
        "DATALOADER.NUM_INSTANCE": "2",
        "SOLVER.MAX_EPOCHS": str(epochs),
        "SOLVER.WARMUP_EPOCHS": "1",
        "SOLVER.STEPS": "[1]",
        "SOLVER.CHECKPOINT_PERIOD": "1",
        "SOLVER.EVAL_PERIOD": "0",
        "SOLVER.LOG_PERIOD": "1",
        "TEST.EVAL_AFTER_TRAINING": "False",
        "OUTPUT_DIR": output_dir,
    }
    opts.update(extra)
    return [item for pair in opts.items() for item in pair]
