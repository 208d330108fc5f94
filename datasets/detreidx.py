"""DetReIDX(V1) layout: frame-name parser, tracklet records, scanner, splits and a statistics table.

Layout on disk::

    ROOT/train/<PID>/<tracklet>/*.jpg
    ROOT/case1_aerial_to_ground/{query,gallery}/<PID>/<tracklet>/*.jpg
    ROOT/case2_ground_to_aerial/{query,gallery}/<PID>/<tracklet>/*.jpg
    ROOT/case3_aerial_to_aerial/{query,gallery}/<PID>/<tracklet>/*.jpg

Frame names follow one of two schemes (fields split on ``_``):

* outdoor / aerial (soft-biometric scheme)::

    PID_DD_MM_YYYY_HH_MM_Height_Distance_Angle_Location_HairColor_HairStyle_Beard_Moustache_
    Glasses_HeadAccessories_UpperBodyCloths_LowerBodyCloths_Feet_Accessories_Action_DroneScene_
    SessionID[_more tokens such as a frame number]

  height / distance / angle are fields 6 / 7 / 8, the session a token like ``S1``.
* ground / indoor::

    PID_Gender_Age_Height_Weight_Ethnicity_Angle_View[_more tokens]

Run ``python -m datasets.detreidx --root DIR`` to print the statistics table of a root.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np

from datasets.registry import register_dataset
from utils.protocol import (  # noqa: F401  (re-exported: the protocol lives in utils.protocol)
    CASE_FOLDERS, CASE_NAMES, CASE_VIEWS, EXPECTED_LAYOUT, FRAME_EXTENSIONS, TRAIN_FOLDER, natural_sort_key,
)

logger = logging.getLogger(__name__)


# The 18 drone capture points of DetReIDX: (height m, horizontal distance m, pitch degrees).
CAPTURE_POINTS: tuple[tuple[float, float, float], ...] = (
    (5.8, 10, 30), (11.5, 20, 30), (17.3, 30, 30), (23.1, 40, 30), (40, 80, 30), (60, 120, 30),
    (15, 10, 60), (30, 20, 60), (45, 30, 60), (60, 40, 60), (75, 80, 60), (90, 120, 60),
    (10, 0, 90), (20, 0, 90), (30, 0, 90), (40, 0, 90), (80, 0, 90), (120, 0, 90),
)

OUTDOOR_MIN_FIELDS = 9  # PID, date (3), time (2), height, distance, angle
OUTDOOR_SESSION_FIELD = 22
GROUND_MIN_FIELDS = 8
_SESSION_RE = re.compile(r"^[Ss](\d+)$")


class DatasetLayoutError(ValueError):
    """The dataset folder does not follow the DetReIDX layout; the message names the path and the fix."""


# ----------------------------------------------------------------------------- frame names
@dataclass(frozen=True)
class FrameNameInfo:
    """What a frame file name says about its tracklet."""

    scheme: str                 # "outdoor" | "ground" | "unknown"
    view: str                   # "aerial" | "ground"
    pid_token: str | None       # field 0 as written (may differ from the PID folder in anonymised sets)
    session: str | None         # "S1", "S2", ... (outdoor scheme) or None
    height: float | None        # drone altitude in metres (outdoor scheme)
    distance: float | None      # horizontal distance in metres (outdoor scheme)
    angle: float | None         # pitch in degrees (outdoor scheme)

    @property
    def aerial_distance(self) -> float | None:
        if self.height is None or self.distance is None:
            return None
        return math.hypot(self.height, self.distance)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return math.isfinite(float(token))


def _looks_like_outdoor(tokens: Sequence[str]) -> bool:
    if len(tokens) < OUTDOOR_MIN_FIELDS or not all(t.isdigit() for t in tokens[:6]):
        return False
    day, month, year, hour, minute = (int(t) for t in tokens[1:6])
    date_ok = 1 <= day <= 31 and 1 <= month <= 12 and len(tokens[3]) == 4 and hour <= 23 and minute <= 59
    return date_ok and all(_is_number(t) for t in tokens[6:9])


def _find_session(tokens: Sequence[str]) -> str | None:
    # The scheme puts the session at field 22; be lenient about extra or missing soft-biometric
    # fields and take the first S<n> token after the location field otherwise.
    candidates = []
    if len(tokens) > OUTDOOR_SESSION_FIELD:
        candidates.append(tokens[OUTDOOR_SESSION_FIELD])
    candidates.extend(tokens[10:])
    for token in candidates:
        match = _SESSION_RE.match(token)
        if match:
            return f"S{int(match.group(1))}"
    return None


def parse_frame_name(name: str, unknown_as_ground: bool = False) -> FrameNameInfo:
    """Parse a frame file name (with or without folder and extension).

    Raises ``ValueError`` naming the file when it fits neither scheme, unless ``unknown_as_ground``
    (config ``DATASETS.UNKNOWN_NAMES_AS_GROUND``), in which case it is a ground frame.
    """
    stem = os.path.splitext(os.path.basename(name))[0]
    tokens = stem.split("_")
    if _looks_like_outdoor(tokens):
        return FrameNameInfo(
            scheme="outdoor", view="aerial", pid_token=tokens[0], session=_find_session(tokens),
            height=float(tokens[6]), distance=float(tokens[7]), angle=float(tokens[8]),
        )
    if len(tokens) >= GROUND_MIN_FIELDS and tokens[0].isdigit():
        return FrameNameInfo("ground", "ground", tokens[0], None, None, None, None)
    if unknown_as_ground:
        return FrameNameInfo("unknown", "ground", None, None, None, None, None)
    raise ValueError(
        f"Frame name {name!r} fits no DetReIDX scheme (outdoor: PID_DD_MM_YYYY_HH_MM_Height_Distance_Angle_..._S<n>_..., "
        f"ground: PID_Gender_Age_Height_Weight_Ethnicity_Angle_View_...). Rename the file, remove it, or set "
        f"DATASETS.UNKNOWN_NAMES_AS_GROUND True to treat such frames as ground frames."
    )


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Tracklet:
    """One tracklet (a folder of frames of one person seen by one camera)."""

    frames: tuple[str, ...]          # frame file paths in temporal order (natural sort of the names)
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

    @property
    def folder(self) -> str:
        return os.path.dirname(self.frames[0])

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
    return sorted(tracklets, key=lambda t: (t.pid, natural_sort_key(t.name)))


def _make_case(case: int, query: list[Tracklet], gallery: list[Tracklet]) -> CaseSplit:
    query, gallery = _sort_tracklets(query), _sort_tracklets(gallery)
    gallery_pids = {t.pid for t in gallery}
    has_gt = any(t.pid in gallery_pids for t in query)
    return CaseSplit(case=case, query=query, gallery=gallery, has_ground_truth=has_gt)


# ----------------------------------------------------------------------------- scanning
@dataclass
class _RawTracklet:
    """A scanned tracklet before camera ids are known."""

    frames: tuple[str, ...]
    pid: int
    name: str
    info: FrameNameInfo

    @property
    def camera_key(self) -> str:
        if self.info.view == "ground":
            return "ground"
        return f"aerial-{self.info.session or 'unknown'}"


def _list_subfolders(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        return sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _scan_tracklet(folder: str, pid: int, unknown_as_ground: bool) -> _RawTracklet:
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_file() and e.name.lower().endswith(FRAME_EXTENSIONS)]
    if not names:
        raise DatasetLayoutError(
            f"Tracklet folder {folder} holds no frames ({'/'.join(FRAME_EXTENSIONS)} files). "
            f"Remove the empty folder or copy its frames back."
        )
    names.sort(key=natural_sort_key)
    infos = []
    parsed_prefixes: dict[str, FrameNameInfo] = {}
    for frame_name in names:
        # Frames of one tracklet usually differ only in a trailing frame number: parse each distinct
        # prefix once, which keeps scanning ~12M real frame names fast. A trailing number after the
        # ninth field never changes the parse (it cannot be height/distance/angle or a session).
        prefix, _, last = os.path.splitext(frame_name)[0].rpartition("_")
        cacheable = last.isdigit() and prefix.count("_") >= 8
        info = parsed_prefixes.get(prefix) if cacheable else None
        if info is None:
            try:
                info = parse_frame_name(frame_name, unknown_as_ground)
            except ValueError as exc:
                raise DatasetLayoutError(f"In {folder}: {exc}") from None
            if cacheable:
                parsed_prefixes[prefix] = info
        infos.append(info)
    # Metadata comes from the first frame; a tracklet mixing views is a data error worth stopping for.
    views = {info.view for info in infos}
    if len(views) > 1:
        raise DatasetLayoutError(
            f"Tracklet folder {folder} mixes aerial and ground frame names. Split it into one tracklet per camera."
        )
    return _RawTracklet(tuple(os.path.join(folder, n) for n in names), pid, os.path.basename(folder), infos[0])


def _scan_pid_tree(path: str, unknown_as_ground: bool, split_label: str) -> list[_RawTracklet]:
    """Scan ``path/<PID>/<tracklet>/frames`` and check that tracklet names are unique across PIDs."""
    tracklets: list[_RawTracklet] = []
    for pid_entry in _list_subfolders(path):
        if not pid_entry.name.isdigit():
            raise DatasetLayoutError(
                f"PID folder {pid_entry.path} is not an integer. DetReIDX PID folders are integers such as 0004; "
                f"rename the folder or move it out of {path}. {EXPECTED_LAYOUT}"
            )
        pid = int(pid_entry.name)
        for tracklet_entry in _list_subfolders(pid_entry.path):
            tracklets.append(_scan_tracklet(tracklet_entry.path, pid, unknown_as_ground))
    return tracklets


def _check_unique_names(tracklets: Iterable[_RawTracklet], where: str) -> None:
    first_seen: dict[str, _RawTracklet] = {}
    for tracklet in tracklets:
        other = first_seen.setdefault(tracklet.name, tracklet)
        if other is not tracklet and other.pid != tracklet.pid:
            raise DatasetLayoutError(
                f"Tracklet name {tracklet.name!r} occurs under two PIDs in {where}: "
                f"{os.path.dirname(other.frames[0])} and {os.path.dirname(tracklet.frames[0])}. "
                f"Tracklet names identify rows of the submission; rename one of them."
            )


def _check_folder(path: str, what: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise DatasetLayoutError(f"Missing {what}: {path}. {fix}")


# ----------------------------------------------------------------------------- validation split
def split_cases_from_tracklets(tracklets: Sequence[Tracklet], rng: np.random.Generator) -> dict[int, CaseSplit]:
    """Lay out labelled tracklets like the three test cases, each query with a true match.

    Case 1: aerial queries vs ground gallery; case 2: ground queries vs aerial gallery; case 3:
    each identity's aerial tracklets are split per camera (session) into a query half and a
    gallery half, the gallery keeping at least one tracklet of every camera, so that every query
    has a same-identity gallery tracklet with another name (challenge rule) and, when the identity
    was filmed in two sessions, with another camera (Market-1501 rule). Queries without a match are
    dropped; cases left empty are omitted.
    """
    by_pid: dict[int, list[Tracklet]] = defaultdict(list)
    for t in tracklets:
        by_pid[t.pid].append(t)
    queries: dict[int, list[Tracklet]] = {1: [], 2: [], 3: []}
    galleries: dict[int, list[Tracklet]] = {1: [], 2: [], 3: []}
    for pid in sorted(by_pid):
        own = _sort_tracklets(by_pid[pid])
        aerial = [t for t in own if t.view == "aerial"]
        ground = [t for t in own if t.view == "ground"]
        if aerial and ground:
            queries[1] += aerial
            galleries[1] += ground
            queries[2] += ground
            galleries[2] += aerial
        else:
            # Gallery distractors: an identity seen from one view only still belongs in that gallery.
            galleries[1] += ground
            galleries[2] += aerial
        a2a_query, a2a_gallery = split_aerial_to_aerial(aerial, rng)
        queries[3] += a2a_query
        galleries[3] += a2a_gallery
    cases = {}
    for case in (1, 2, 3):
        if queries[case] and galleries[case]:
            cases[case] = _make_case(case, queries[case], galleries[case])
    return cases


def split_aerial_to_aerial(aerial: Sequence, rng: np.random.Generator) -> tuple[list, list]:
    """Split one identity's aerial tracklets into (query, gallery) as described in split_cases_from_tracklets.

    Works on any records with a ``camid`` attribute (the synthetic generator uses it too).
    """
    if len(aerial) < 2:
        return [], list(aerial)
    by_cam: dict[int, list[Tracklet]] = defaultdict(list)
    for t in aerial:
        by_cam[t.camid].append(t)
    query: list = []
    gallery: list = []
    for camid in sorted(by_cam):
        group = [by_cam[camid][i] for i in rng.permutation(len(by_cam[camid]))]
        n_query = len(group) // 2     # at least one per camera stays in the gallery
        query += group[:n_query]
        gallery += group[n_query:]
    if not query and len(by_cam) > 1:
        # Every camera holds one tracklet: the first camera's one becomes the query.
        first = by_cam[min(by_cam)][0]
        query, gallery = [first], [t for t in gallery if t is not first]
    return query, gallery


# ----------------------------------------------------------------------------- dataset
@register_dataset("detreidx")
class DetReIDX:
    """Scan a DetReIDX root: train (relabelled, minus validation identities), validation cases, test cases.

    Args:
        root: dataset root holding ``train/`` and/or the three ``case*/`` folders.
        val_ids: number of train identities held out as a labelled validation split (``DATASETS.VAL_IDS``).
        unknown_names_as_ground: treat frame names that fit no scheme as ground frames
            (``DATASETS.UNKNOWN_NAMES_AS_GROUND``) instead of failing.
        seed: chooses the validation identities and their case-3 query/gallery split.
    """

    def __init__(self, root: str, val_ids: int = 0, unknown_names_as_ground: bool = False, seed: int = 0,
                 cases: Sequence[int] | None = None):
        self.root = os.path.abspath(root)
        self.wanted_cases = set(CASE_FOLDERS) if cases is None else set(cases)  # the case folders to scan
        self.unknown_names_as_ground = unknown_names_as_ground
        if not os.path.isdir(self.root):
            raise DatasetLayoutError(
                f"Dataset root {self.root} does not exist. Set DATASETS.ROOT_DIR to the DetReIDXV1 folder "
                f"(holding train/ and case*/), or generate the synthetic dataset there with "
                f"`python -m datasets.synthetic --root {root}` (or DATASETS.SYNTHETIC_IF_MISSING True)."
            )
        raw_train, raw_cases = self._scan()
        camera_keys = sorted({t.camera_key for t in raw_train} | {t.camera_key for q, g in raw_cases.values() for t in q + g})
        # Ground is always camera 0; aerial sessions follow in sorted order (S1 -> 1, S2 -> 2).
        aerial_keys = sorted(k for k in camera_keys if k != "ground")
        self.camera_index: dict[str, int] = {"ground": 0, **{k: i + 1 for i, k in enumerate(aerial_keys)}}
        self.num_cameras = 1 + len(aerial_keys)

        all_train = [self._to_tracklet(t) for t in raw_train]
        train_pids = sorted({t.pid for t in all_train})
        if val_ids < 0 or (val_ids and val_ids >= len(train_pids)):
            raise DatasetLayoutError(
                f"DATASETS.VAL_IDS = {val_ids} but {os.path.join(self.root, TRAIN_FOLDER)} holds "
                f"{len(train_pids)} identities; choose 0 <= VAL_IDS < {len(train_pids)}."
            )
        rng = np.random.default_rng(seed)
        self.val_pids = self._choose_val_pids(all_train, val_ids, rng)
        kept_pids = [p for p in train_pids if p not in self.val_pids]
        relabel = {pid: label for label, pid in enumerate(kept_pids)}
        self.pid_to_label = relabel
        self.train: list[Tracklet] = [
            replace(t, label=relabel[t.pid]) for t in _sort_tracklets(all_train) if t.pid in relabel
        ]
        self.num_train_pids = len(kept_pids)
        val_tracklets = [t for t in all_train if t.pid in self.val_pids]
        self.val: dict[int, CaseSplit] = split_cases_from_tracklets(val_tracklets, rng) if val_tracklets else {}
        if val_ids and len(self.val) < 3:
            missing = sorted(set(CASE_FOLDERS) - set(self.val))
            logger.warning("Validation split has no queries with a true match for case(s) %s", missing)
        self.cases: dict[int, CaseSplit] = {
            case: _make_case(case, [self._to_tracklet(t) for t in q], [self._to_tracklet(t) for t in g])
            for case, (q, g) in sorted(raw_cases.items())
        }
        logger.info("DetReIDX at %s\n%s", self.root, self.statistics_table())

    # -- scanning
    def _scan(self) -> tuple[list[_RawTracklet], dict[int, tuple[list[_RawTracklet], list[_RawTracklet]]]]:
        train_dir = os.path.join(self.root, TRAIN_FOLDER)
        case_dirs = {c: os.path.join(self.root, f) for c, f in CASE_FOLDERS.items()}
        present = {c for c, d in case_dirs.items() if os.path.isdir(d) and c in self.wanted_cases}
        if not os.path.isdir(train_dir) and not present:
            raise DatasetLayoutError(
                f"Dataset root {self.root} holds neither {TRAIN_FOLDER}/ nor any of "
                f"{', '.join(CASE_FOLDERS.values())}. Point DATASETS.ROOT_DIR at the DetReIDXV1 folder. "
                f"{EXPECTED_LAYOUT}"
            )
        if present and present != self.wanted_cases:
            missing = [case_dirs[c] for c in sorted(self.wanted_cases - present)]
            raise DatasetLayoutError(
                f"Missing case folder(s): {', '.join(missing)} (the root has the other case folders). "
                f"Copy the complete test set into {self.root}. {EXPECTED_LAYOUT}"
            )
        raw_train: list[_RawTracklet] = []
        if os.path.isdir(train_dir):
            raw_train = _scan_pid_tree(train_dir, self.unknown_names_as_ground, "train")
            _check_unique_names(raw_train, train_dir)
        else:
            logger.warning("No %s/ folder in %s: only the test cases are available", TRAIN_FOLDER, self.root)
        raw_cases = {}
        for case in sorted(present):
            parts = []
            for part in ("query", "gallery"):
                part_dir = os.path.join(case_dirs[case], part)
                _check_folder(part_dir, f"{part} folder of {CASE_FOLDERS[case]}",
                              f"Each case folder holds query/ and gallery/; copy the complete test set into "
                              f"{self.root}. {EXPECTED_LAYOUT}")
                parts.append(_scan_pid_tree(part_dir, self.unknown_names_as_ground, f"{CASE_FOLDERS[case]}/{part}"))
            _check_unique_names(parts[0] + parts[1], case_dirs[case])
            raw_cases[case] = (parts[0], parts[1])
        return raw_train, raw_cases

    def _to_tracklet(self, raw: _RawTracklet) -> Tracklet:
        info = raw.info
        return Tracklet(
            frames=raw.frames, pid=raw.pid, camid=self.camera_index[raw.camera_key], view=info.view,
            name=raw.name, session=info.session, height=info.height, distance=info.distance,
            angle=info.angle, aerial_distance=info.aerial_distance,
        )

    @staticmethod
    def _choose_val_pids(tracklets: Sequence[Tracklet], val_ids: int, rng: np.random.Generator) -> set[int]:
        if val_ids == 0:
            return set()
        views = defaultdict(set)
        for t in tracklets:
            views[t.pid].add(t.view)
        # Identities seen from both views first: they give queries to all three cases.
        both = sorted(p for p, v in views.items() if len(v) == 2)
        single = sorted(p for p, v in views.items() if len(v) < 2)
        chosen = [both[i] for i in rng.permutation(len(both))][:val_ids]
        if len(chosen) < val_ids:
            chosen += [single[i] for i in rng.permutation(len(single))][: val_ids - len(chosen)]
        return set(chosen)

    # -- reporting
    def statistics_table(self) -> str:
        """A text table: identities, tracklets, frames per split/case, cameras and capture points."""
        rows: list[tuple[str, Sequence[Tracklet]]] = [("train", self.train)]
        for case, split in sorted(self.val.items()):
            rows += [(f"val {CASE_FOLDERS[case]} query", split.query), (f"val {CASE_FOLDERS[case]} gallery", split.gallery)]
        for case, split in sorted(self.cases.items()):
            rows += [(f"{CASE_FOLDERS[case]} query", split.query), (f"{CASE_FOLDERS[case]} gallery", split.gallery)]
        header = ("split", "ids", "tracklets", "frames", "len min/mean/max", "len<8", "aerial", "ground")
        table = [header]
        for label, tracklets in rows:
            lengths = np.array([t.num_frames for t in tracklets]) if tracklets else np.zeros(1, dtype=int)
            table.append((
                label, str(len({t.pid for t in tracklets})), str(len(tracklets)), str(int(lengths.sum())),
                f"{lengths.min()}/{lengths.mean():.1f}/{lengths.max()}", str(int((lengths < 8).sum()) if tracklets else 0),
                str(sum(t.view == "aerial" for t in tracklets)), str(sum(t.view == "ground" for t in tracklets)),
            ))
        lines = [_format_table(table)]

        names = {v: k for k, v in self.camera_index.items()}
        cam_counts = Counter(t.camid for t in self._unique_tracklets())
        cams = ", ".join(f"{cid}={names[cid]} ({cam_counts.get(cid, 0)} tracklets)" for cid in sorted(names))
        lines.append(f"cameras: {self.num_cameras} [{cams}]; train identities after relabelling: {self.num_train_pids}"
                     + (f"; validation identities: {len(self.val_pids)}" if self.val_pids else ""))

        groups = {"train": self.train,
                  "val": [t for s in self.val.values() for t in s.query + s.gallery],
                  "test": [t for s in self.cases.values() for t in s.query + s.gallery]}
        per_point: dict[str, Counter] = {}
        for group, tracklets in groups.items():
            seen = {}
            for t in tracklets:
                seen[t.name] = t          # the same tracklet is listed in several cases: count it once
            per_point[group] = Counter(_capture_label(t) for t in seen.values())
        labels = sorted(set().union(*per_point.values()), key=_capture_sort_key)
        point_table = [("capture point (h/d/angle)", *groups.keys())]
        point_table += [(label, *(str(per_point[g].get(label, 0)) for g in groups)) for label in labels]
        lines.append("tracklets per capture point (unique tracklet names):")
        lines.append(_format_table(point_table))
        return "\n".join(lines)

    def _unique_tracklets(self) -> list[Tracklet]:
        seen = {}
        for t in self.train + [t for s in list(self.val.values()) + list(self.cases.values()) for t in s.query + s.gallery]:
            seen[(t.pid, t.name)] = t
        return list(seen.values())


def _capture_label(t: Tracklet) -> str:
    if t.view == "ground":
        return "ground"
    if t.height is None:
        return "aerial (unknown)"
    return f"{t.height:g}m/{t.distance:g}m/{t.angle:g}deg"


def _capture_sort_key(label: str) -> tuple:
    if label == "ground":
        return (0, 0.0, 0.0, 0.0)
    if "unknown" in label:
        return (2, 0.0, 0.0, 0.0)
    h, d, a = (float(x.rstrip("mdeg")) for x in label.split("/"))
    return (1, a, h, d)


def _format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scan a DetReIDX root and print its statistics table.")
    parser.add_argument("--root", required=True, help="dataset root (train/ and case*/ folders)")
    parser.add_argument("--val-ids", type=int, default=0, help="train identities held out as validation (DATASETS.VAL_IDS)")
    parser.add_argument("--unknown-names-as-ground", action="store_true", help="treat unparseable frame names as ground frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    args = parser.parse_args(argv)
    try:
        dataset = DetReIDX(args.root, val_ids=args.val_ids, unknown_names_as_ground=args.unknown_names_as_ground, seed=args.seed)
    except DatasetLayoutError as exc:
        print(f"error: {exc}")
        return 2
    print(f"DetReIDX at {dataset.root}")
    print(dataset.statistics_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
