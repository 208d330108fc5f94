"""``python tests/children/signal_child.py PHASE_FILE TARGET MARKER train.py-args...``: run ``train.py`` with its
loop phases announced, so a test can signal it in a chosen phase (tests/test_signals.py).

The main process writes the current phase into PHASE_FILE: ``train<epoch>`` (training steps),
``rebuild<epoch>`` (the memory rebuild), ``validation <tag>`` and ``final`` (the test evaluation).
Loader workers (training and inference) read it for every clip; in phase TARGET they create MARKER
and slow down (0.3 s a clip; while MARKER.hold exists they wait), so the test finds the run there,
and still there, when it signals.
Nothing else changes: the real train.py, loaders, workers and signal handling run.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

PHASE_FILE, TARGET, MARKER = sys.argv[1:4]
sys.argv = ["train.py", *sys.argv[4:]]

import datasets.video as video  # noqa: E402
import processor.trainer as trainer  # noqa: E402
import train  # noqa: E402
from utils.cli import run_main  # noqa: E402

_current = {"phase": "start", "epoch": 0}


def set_phase(name: str) -> str:
    previous = _current["phase"]
    _current["phase"] = name
    tmp = PHASE_FILE + ".w"
    with open(tmp, "w") as f:
        f.write(name)
    os.replace(tmp, PHASE_FILE)
    return previous


def in_target() -> bool:
    try:
        with open(PHASE_FILE) as f:
            phase = f.read()
    except OSError:
        return False
    if phase != TARGET:
        return False
    open(MARKER, "a").close()
    time.sleep(0.3)
    while os.path.exists(MARKER + ".hold"):   # the test holds the run here until it removes this file
        time.sleep(0.05)
    return True


def slowed(getitem):
    def wrapper(self, item):
        in_target()
        return getitem(self, item)
    return wrapper


video.TrainClipDataset.__getitem__ = slowed(video.TrainClipDataset.__getitem__)
video.InferenceClipDataset.__getitem__ = slowed(video.InferenceClipDataset.__getitem__)

_train_epoch, _rebuild = trainer.Trainer.train_epoch, trainer.Trainer.rebuild_memory
_validate, _evaluate_test = trainer.Trainer.validate, trainer.Trainer.evaluate_test


def train_epoch(self, epoch):
    _current["epoch"] = epoch
    set_phase(f"train{epoch}")
    try:
        return _train_epoch(self, epoch)
    finally:
        set_phase("idle")


def rebuild_memory(self):
    previous = set_phase(f"rebuild{_current['epoch']}")
    try:
        return _rebuild(self)
    finally:
        set_phase(previous)


def validate(self, tag):
    previous = set_phase(f"validation {tag}")
    try:
        return _validate(self, tag)
    finally:
        set_phase(previous)


def evaluate_test(self, chosen=None):
    set_phase("final")
    try:
        return _evaluate_test(self, chosen)
    finally:
        set_phase("done")


trainer.Trainer.train_epoch = train_epoch
trainer.Trainer.rebuild_memory = rebuild_memory
trainer.Trainer.validate = validate
trainer.Trainer.evaluate_test = evaluate_test

if __name__ == "__main__":
    run_main(train.main)
