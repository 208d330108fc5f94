"""Builders from the config: the dataset, the training loader and the inference loaders.

* ``build_dataset(cfg)``: scans ``DATASETS.ROOT_DIR`` (generating the synthetic dataset there first
  when it is missing and ``DATASETS.SYNTHETIC_IF_MISSING`` is on).
* ``build_train_loader(cfg, dataset, rank, world_size)``: P x K identity batches of augmented clips.
* ``build_inference_loader(cfg, tracklets)``: test-transform clips in a fixed order; use it for the
  query/gallery of each case, the validation cases and the memory rebuild over ``dataset.train``.
"""
from __future__ import annotations

import logging
import os
import random
import weakref
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.records import Tracklet
from datasets.registry import get_dataset_class
from datasets.identity_sampler import IdentityBatchSampler
from datasets.frame_sampling import SAMPLING_MODES
from datasets.synthetic import SyntheticConfig, generate_dataset
from datasets.transforms import ClipTransform
from datasets.video import InferenceClipDataset, TrainClipDataset
from utils import signals
from utils.signals import ignore_in_worker

logger = logging.getLogger(__name__)


def nearest_existing_folder(path: str) -> str:
    """The deepest existing folder on the way to ``path`` (absolute): where a mistyped path went wrong."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_data_root(cfg) -> None:
    """DatasetLayoutError when ``DATASETS.ROOT_DIR`` does not exist and will not be generated
    (``DATASETS.SYNTHETIC_IF_MISSING`` off). Cheap: the command lines call it before they write or
    build anything."""
    data = cfg.DATASETS
    root = data.ROOT_DIR
    if not os.path.isdir(root) and not data.SYNTHETIC_IF_MISSING:
        from datasets.detreidx.scan import DatasetLayoutError

        raise DatasetLayoutError(
            f"Dataset root {os.path.abspath(root)} does not exist (nearest existing folder: "
            f"{nearest_existing_folder(root)}). Set DATASETS.ROOT_DIR to the DetReIDXV1 folder (holding train/ "
            f"and case*/); to get synthetic data there, run `python -m datasets.synthetic --root {root}`."
        )


def build_dataset(cfg, cases=None, camera_index=None) -> DetReIDX:
    """The dataset named by ``DATASETS.NAMES`` at ``DATASETS.ROOT_DIR``.

    Validation identities (``DATASETS.VAL_IDS``) are chosen with ``SOLVER.SEED``. ``cases`` (e.g.
    ``[1, 3]``) limits the test case folders that must exist and are scanned (default: all three).
    ``camera_index`` (a checkpoint's camera key -> SIE id table) numbers the cameras as the model was
    trained; default: from the data.
    A missing root is generated only when ``DATASETS.SYNTHETIC_IF_MISSING`` is on (a config file's
    own root; see ``configs.load_config``), else it is an error naming the nearest existing folder.
    """
    data = cfg.DATASETS
    root = data.ROOT_DIR
    check_data_root(cfg)
    if not os.path.isdir(root):
        logger.info("%s does not exist: generating the synthetic XFD dataset there (DATASETS.SYNTHETIC_IF_MISSING)", root)
        config = SyntheticConfig(num_ids=int(data.SYNTHETIC_IDS), num_test_ids=int(data.SYNTHETIC_TEST_IDS),
                                 seed=int(data.SYNTHETIC_SEED))
        try:
            generate_dataset(root, config)
        except FileExistsError:
            # Another process (e.g. a DDP rank) created it between our check and our rename.
            logger.info("%s appeared while generating; using it", root)
    dataset_class = get_dataset_class(data.NAMES)
    extra = {} if cases is None else {"cases": sorted(int(c) for c in cases)}
    if camera_index:
        extra["camera_index"] = dict(camera_index)
    return dataset_class(root, val_ids=int(data.VAL_IDS), unknown_names_as_ground=bool(data.UNKNOWN_NAMES_AS_GROUND),
                         seed=int(cfg.SOLVER.SEED), junk_rule=str(cfg.TEST.JUNK_RULE),
                         scan_cache_dir=str(data.SCAN_CACHE_DIR), **extra)


def seed_worker(worker_id: int) -> None:
    """Loader worker start-up: leave stop signals to the main process, and seed the global RNGs from
    the loader's seeded generator (deterministic).

    (Clip randomness itself comes from the per-sample seeds of the batch sampler; this covers any
    library code that draws from the global generators.)
    """
    # Ctrl-C, SIGTERM and SIGUSR1 are the main process's to handle (stop at a step boundary): a
    # scheduler signals the whole process group, and a worker killed by it would end the run with the
    # DataLoader's "worker killed by signal" traceback.
    ignore_in_worker()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SignalSafeLoader(DataLoader):
    """A DataLoader whose workers are forked with the stop signals blocked (they ignore them before
    unblocking: see ``utils.signals``), and which, with ``check_stop``, is a step boundary: asking it
    for the next batch after a stop signal raises ``utils.signals.RunInterrupted`` (``stop_where``
    goes into the message). Inference loaders check; the training loop checks the flag itself (under
    DDP every rank must stop at the same step)."""

    def __init__(self, *args, check_stop: bool = False, stop_where: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.check_stop = check_stop
        self.stop_where = stop_where

    def _get_iterator(self):
        with signals.blocked():   # the workers fork here
            iterator = super()._get_iterator()
        if getattr(iterator, "_workers", None):
            _LIVE_ITERATORS.add(iterator)
        return iterator

    def shutdown_workers(self) -> None:
        """Stop this loader's persistent workers now (they would otherwise live until garbage collection)."""
        iterator = getattr(self, "_iterator", None)
        self._iterator = None
        if iterator is not None:
            _shutdown(iterator)

    def __iter__(self):
        iterator = super().__iter__()
        if not self.check_stop:
            return iterator
        return self._checked(iterator)

    def _checked(self, iterator):
        while True:
            if signals.stop_requested():
                _shutdown(iterator)   # the workers end with the loop, not when the traceback is freed
                signals.check_stop(self.stop_where)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch


# Iterators with live worker processes: shut down before a command line exits on an error or an
# interrupt. Otherwise the workers outlive the run until interpreter exit, where multiprocessing
# terminates them and the DataLoader reports "worker killed by signal" with a traceback.
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


def _shutdown(iterator) -> None:
    stop = getattr(iterator, "_shutdown_workers", None)
    if stop is not None:
        stop()
    _LIVE_ITERATORS.discard(iterator)


def shutdown_loader_workers() -> None:
    """Stop the worker processes of every loader built here that still has them (see _LIVE_ITERATORS)."""
    for iterator in list(_LIVE_ITERATORS):
        _shutdown(iterator)


def _loader_kwargs(cfg, seed: int) -> dict:
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    if workers < 0:
        raise ValueError(f"DATALOADER.NUM_WORKERS must be >= 0, got {workers}")
    if workers > 0:
        # OpenCV's thread pool does not survive fork(): a worker that touches it (even to resize it)
        # can hang forever. Make OpenCV single-threaded before the workers fork; each worker is one
        # process per core anyway.
        cv2.setNumThreads(1)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return dict(
        num_workers=workers,
        pin_memory=bool(cfg.DATALOADER.PIN_MEMORY) and torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=workers > 0,
    )


def build_train_loader(cfg, dataset: DetReIDX, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training loader over ``dataset.train``.

    Batches: dict(frames=(B,T,3,H,W) float32 normalised, labels=(B,), camids=(B,), views=(B,),
    indices=(B,)) all long, B = SOLVER.IMS_PER_BATCH // world_size, T = DATALOADER.SEQ_LEN.
    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch; ``len(loader)`` is the number
    of steps per epoch (the same on every rank). Frames that cannot be read are skipped with a
    warning when DATASETS.SKIP_CORRUPT_FRAMES is on; ``loader.dataset.skipped_frames`` counts them.
    """
    if not dataset.train:
        raise ValueError(f"No training tracklets under {os.path.join(dataset.root, 'train')}; cannot build the train loader.")
    seq_len = int(cfg.DATALOADER.SEQ_LEN)
    clips = TrainClipDataset(
        dataset.train, seq_len, ClipTransform.from_cfg(cfg, train=True),
        shuffle_frames=bool(cfg.INPUT.SHUFFLE_FRAMES), skip_corrupt=bool(cfg.DATASETS.SKIP_CORRUPT_FRAMES),
    )
    sampler = IdentityBatchSampler(
        [t.label for t in dataset.train], int(cfg.SOLVER.IMS_PER_BATCH), int(cfg.DATALOADER.NUM_INSTANCE),
        seed=int(cfg.SOLVER.SEED), rank=rank, world_size=world_size,
    )
    return SignalSafeLoader(clips, batch_sampler=sampler, **_loader_kwargs(cfg, int(cfg.SOLVER.SEED) + rank))


def build_inference_loader(cfg, tracklets: Sequence[Tracklet]) -> DataLoader:
    """Inference loader over ``tracklets`` with the test transform (no augmentation, no shuffle).

    Batches: dict(frames=(B,T,3,H,W) float32, camids=(B,), views=(B,), indices=(B,)) with indices into
    ``tracklets``, T = TEST.SEQ_LEN, B <= TEST.IMS_PER_BATCH. TEST.SAMPLING "even": one clip per
    tracklet; "dense": every frame, in several chunks per tracklet that share an index (average the
    chunk features per index).
    """
    mode = str(cfg.TEST.SAMPLING)
    if mode not in SAMPLING_MODES:
        raise ValueError(f"TEST.SAMPLING must be one of {SAMPLING_MODES}, got {mode!r}")
    clips = InferenceClipDataset(
        tracklets, int(cfg.TEST.SEQ_LEN), mode, ClipTransform.from_cfg(cfg, train=False),
        skip_corrupt=bool(cfg.DATASETS.SKIP_CORRUPT_FRAMES),
    )
    kwargs = _loader_kwargs(cfg, int(cfg.SOLVER.SEED))
    # Inference loaders are built per case; persistent workers would outlive their use.
    kwargs["persistent_workers"] = False
    # A step boundary: a stop signal (utils.signals) stops evaluation, validation and the memory
    # rebuild before the next batch.
    return SignalSafeLoader(clips, batch_size=int(cfg.TEST.IMS_PER_BATCH), shuffle=False, drop_last=False,
                            check_stop=True, **kwargs)
