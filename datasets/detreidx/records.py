"""Records of a scanned dataset: a :class:`Tracklet` and the query/gallery :class:`CaseSplit` of one case."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from datasets.detreidx.frames import FrameNames, FramePaths
from utils.protocol import CASE_NAMES, submission_row_key


@dataclass(frozen=True)
class Tracklet:
    """One tracklet (a folder of frames of one person seen by one camera).

    ``frames`` is a sequence of frame paths (``frames[i]``, ``len(frames)``, iteration) stored as the
    folder plus compact names (:class:`FramePaths`); a tuple of paths given here is compacted.
    """

    frames: FramePaths               # frame file paths in temporal order (natural sort of the names)
    pid: int                         # PID folder as an int (anonymised id in the public test set)
    camid: int                       # 0 ground, 1.. aerial sessions in sorted order (S1 -> 1, S2 -> 2)
    view: str                        # "aerial" | "ground"
    name: str                        # tracklet folder name, e.g. "0004_12"
    session: str | None              # "S1"/"S2"/None
    height: float | None             # drone altitude m (None for ground)
    distance: float | None           # horizontal distance m
    angle: float | None              # pitch degrees
    aerial_distance: float | None    # sqrt(h^2 + d^2)
    label: int = -1                  # relabelled train pid 0..C-1 (train only), -1 elsewhere

    def __post_init__(self):
        if not isinstance(self.frames, FramePaths):
            object.__setattr__(self, "frames", FramePaths.from_paths(self.frames))

    @property
    def folder(self) -> str:
        return self.frames.folder

    @property
    def frame_names(self) -> FrameNames:
        return self.frames.names

    def frame_path(self, index: int) -> str:
        return self.frames[index]

    @property
    def view_id(self) -> int:
        return 1 if self.view == "aerial" else 0

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def capture_point(self) -> tuple[float, float, float] | None:
        if self.height is None:
            return None
        return (self.height, self.distance, self.angle)


@dataclass
class CaseSplit:
    """Query and gallery of one evaluation case (1: A->G, 2: G->A, 3: A->A)."""

    case: int
    query: list[Tracklet]            # sorted by (pid, name): the submission CSV order
    gallery: list[Tracklet]          # sorted by (pid, name)
    has_ground_truth: bool = True    # False when query pids never occur in the gallery (anonymised test set)

    @property
    def name(self) -> str:
        return CASE_NAMES[self.case]


def _sort_tracklets(tracklets: Iterable[Tracklet]) -> list[Tracklet]:
    """In submission row order (PID as an integer, then the name as a plain string)."""
    return sorted(tracklets, key=lambda t: submission_row_key(t.pid, t.name))


def _make_case(case: int, query: list[Tracklet], gallery: list[Tracklet]) -> CaseSplit:
    query, gallery = _sort_tracklets(query), _sort_tracklets(gallery)
    gallery_pids = {t.pid for t in gallery}
    has_gt = any(t.pid in gallery_pids for t in query)
    return CaseSplit(case=case, query=query, gallery=gallery, has_ground_truth=has_gt)

