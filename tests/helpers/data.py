"""Tiny synthetic DetReIDX data: the root, a config that reads it, plain query/gallery folders, damaged frames,
Tracklet records."""
from __future__ import annotations

import math
import os
import shutil

from configs import load_config
from datasets.detreidx.records import Tracklet
from datasets.synthetic import SyntheticConfig, generate_dataset
from tests.helpers.paths import DEMO_CONFIG

# Small enough to generate in well under a second, big enough for P x K batches and all three cases.
TINY_DATA = SyntheticConfig(num_ids=6, num_test_ids=3, seed=7, ground_tracklets=2, aerial_tracklets=2,
                            min_frames=3, max_frames=10, ground_size=48, aerial_size=32)

# How a frame file gets damaged: emptied, cut in half (no end-of-image marker), header overwritten.
FRAME_DAMAGE = ("zero-byte", "truncated", "corrupt-header")


def make_tiny_root(folder, config: SyntheticConfig = TINY_DATA) -> str:
    """Generate ``config``'s dataset under ``folder``/tiny_xfd; -> that root."""
    root = os.path.join(str(folder), "tiny_xfd")
    generate_dataset(root, config)
    return root


def make_tiny_cfg(root: str, *opts: str):
    """The demo config on ``root``: 16x8 frames, no workers, 2 x 2 batches, no scan cache; ``opts`` last."""
    return load_config(DEMO_CONFIG, [
        "DATASETS.ROOT_DIR", root, "DATASETS.SYNTHETIC_IF_MISSING", "False", "DATASETS.VAL_IDS", "0",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.NUM_INSTANCE", "2", "DATALOADER.SEQ_LEN", "4",
        "SOLVER.IMS_PER_BATCH", "4", "INPUT.SIZE_TRAIN", "[16, 8]", "INPUT.SIZE_TEST", "[16, 8]",
        "TEST.SEQ_LEN", "4", "TEST.IMS_PER_BATCH", "8", "DATASETS.SCAN_CACHE_DIR", "", *opts,
    ])


def make_query_gallery_halves(root: str, out: str) -> tuple[str, str, list[str]]:
    """Plain query and gallery folders from the test tracklets of ``root`` with >= 4 frames: the first half
    of tracklet i's frames go to ``out/query/person<i>``, its second half to ``out/gallery/group<i%2>/clip<i>.d``
    (renamed ``frame<j>.jpg``), so the true match of query i is gallery clip i. -> (query dir, gallery dir, names)."""
    query_dir, gallery_dir = os.path.join(out, "query"), os.path.join(out, "gallery")
    names = []
    tracklets = []
    for case_dir in sorted(os.listdir(root)):
        if not case_dir.startswith("case"):
            continue
        for part in ("query", "gallery"):
            base = os.path.join(root, case_dir, part)
            for pid in sorted(os.listdir(base)):
                for name in sorted(os.listdir(os.path.join(base, pid))):
                    folder = os.path.join(base, pid, name)
                    frames = sorted(os.listdir(folder))
                    if len(frames) >= 4 and name not in {n for n, _ in tracklets}:
                        tracklets.append((name, [os.path.join(folder, f) for f in frames]))
    for i, (_, frames) in enumerate(tracklets):
        half = len(frames) // 2
        for target, chosen in ((os.path.join(query_dir, f"person{i}"), frames[:half]),
                               (os.path.join(gallery_dir, f"group{i % 2}", f"clip{i}.d"), frames[half:])):
            os.makedirs(target, exist_ok=True)
            for j, frame in enumerate(chosen):
                shutil.copyfile(frame, os.path.join(target, f"frame{j}.jpg"))
        names.append(f"person{i}")
    return query_dir, gallery_dir, names


def damage_frame(path: str, kind: str) -> None:
    """Damage a JPEG in place the way copies and disks do (``kind`` one of FRAME_DAMAGE)."""
    with open(path, "rb") as f:
        data = f.read()
    if kind == "zero-byte":
        data = b""
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "corrupt-header":
        data = data[:2] + bytes(300) + data[302:]
    else:
        raise ValueError(kind)
    with open(path, "wb") as f:
        f.write(data)


def break_session(folder: str) -> None:
    """Rename the frames of an aerial tracklet (names in the authors' form) so that the token before the frame
    number, the session, reads 0: a tracklet whose session cannot be read."""
    for name in os.listdir(folder):
        tokens = os.path.splitext(name)[0].split("_")
        tokens[-2] = "0"
        os.rename(os.path.join(folder, name), os.path.join(folder, "_".join(tokens) + ".jpg"))


def find_tracklet_folder(root: str, part: str = "train", index: int = 0, view: str | None = None) -> str:
    """The ``index``-th tracklet folder under ``root``/``part`` (PID folders, then tracklet folders, in name order),
    among the aerial or ground ones only when ``view`` says (an aerial frame name has over 20 tokens)."""
    base = os.path.join(root, part)
    folders = [os.path.join(base, pid, name) for pid in sorted(os.listdir(base))
               for name in sorted(os.listdir(os.path.join(base, pid)))]
    if view is not None:
        folders = [f for f in folders if (len(sorted(os.listdir(f))[0].split("_")) > 20) == (view == "aerial")]
    return folders[index]


def make_aerial_tracklet(pid: int, name: str, height: float, distance: float, angle: float, session: str,
                         frames=()):
    """A Tracklet record of an aerial tracklet at that capture point and session (camera 1 for S1, else 2)."""
    return Tracklet(frames=tuple(frames), pid=pid, camid=1 if session == "S1" else 2, view="aerial", name=name,
                    session=session, height=height, distance=distance, angle=angle,
                    aerial_distance=math.hypot(height, distance))


def make_ground_tracklet(pid: int, name: str, frames=()):
    """A Tracklet record of a ground tracklet (camera 0)."""
    return Tracklet(frames=tuple(frames), pid=pid, camid=0, view="ground", name=name, session=None,
                    height=None, distance=None, angle=None, aerial_distance=None)
