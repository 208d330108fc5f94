"""The DetReIDX dataset (registered as ``detreidx`` in DATASETS.NAMES): a scanned root split into train,
validation cases and test cases, with camera ids, and its statistics table."""
from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Sequence

import numpy as np

from datasets.detreidx.names import standard_camera_index
from datasets.detreidx.records import CaseSplit, Tracklet, _make_case, _sort_tracklets
from datasets.detreidx.scan import (
    DatasetLayoutError, _check_folder, _check_unique_names, _Part, _RawTracklet, _scan_tracklet, _summarise,
    _walk_folders,
)
from datasets.detreidx.scan_cache import (
    _SCAN_CACHE_FILES, SCAN_CACHE_SETTLE_S, _cache_key, _cache_path, _load_scan_cache, _save_scan_cache,
    default_scan_cache_dir,
)
from datasets.detreidx.splits import split_cases_from_tracklets
from datasets.registry import register_dataset
from utils.protocol import CASE_FOLDERS, CASE_PARTS, CASE_VIEWS, EXPECTED_LAYOUT, JUNK_RULES, TRAIN_FOLDER

logger = logging.getLogger(__name__)


@register_dataset("detreidx")
class DetReIDX:
    """Scan a DetReIDX root: train (relabelled, minus validation identities), validation cases, test cases.

    Args:
        root: dataset root holding ``train/`` and/or the three ``case*/`` folders.
        val_ids: number of train identities held out as a labelled validation split (``DATASETS.VAL_IDS``).
        unknown_names_as_ground: treat frame names that fit no scheme as ground frames
            (``DATASETS.UNKNOWN_NAMES_AS_GROUND``; in a case folder they take the folder's view) instead of failing.
        seed: chooses the validation identities and their case-3 query/gallery split.
        junk_rule: ``TEST.JUNK_RULE``; under "tracklet" every tracklet folder must be named ``{pid}_{tid}``.
        scan_cache_dir: folder of the scan cache (``DATASETS.SCAN_CACHE_DIR``; "auto": the user cache
            folder, "" or None: no cache). Keyed on the root, the name-reading option and every tracklet
            folder's mtime and inode change time; its records must be exactly the folders walked at start.
        camera_index: camera key ("ground", "aerial-S1", ...) -> SIE camera id of a trained model (its
            checkpoint's table); default :func:`standard_camera_index` of the cameras found.
    """

    def __init__(self, root: str, val_ids: int = 0, unknown_names_as_ground: bool = False, seed: int = 0,
                 junk_rule: str = "tracklet", scan_cache_dir: str | None = None,
                 cases: Sequence[int] | None = None, camera_index: dict[str, int] | None = None):
        self.root = os.path.abspath(root)
        self.wanted_cases = set(CASE_FOLDERS) if cases is None else set(cases)  # the case folders to scan
        self.unknown_names_as_ground = unknown_names_as_ground
        if junk_rule not in JUNK_RULES:
            raise ValueError(f"TEST.JUNK_RULE must be one of {JUNK_RULES}, got {junk_rule!r}")
        self.junk_rule = junk_rule
        self.scan_cache_dir = default_scan_cache_dir() if scan_cache_dir == "auto" else (scan_cache_dir or None)
        if not os.path.isdir(self.root):
            raise DatasetLayoutError(
                f"Dataset root {self.root} does not exist. Set DATASETS.ROOT_DIR to the DetReIDXV1 folder "
                f"(holding train/ and case*/), or generate the synthetic dataset there with "
                f"`python -m datasets.synthetic --root {root}` (or DATASETS.SYNTHETIC_IF_MISSING True)."
            )
        start = time.perf_counter()
        parts, raw = self._scan()
        self.scan_summary = _summarise(parts, raw)
        self.scan_summary.seconds = time.perf_counter() - start
        self.scan_summary.from_cache = self._from_cache
        for count, line in self.scan_summary.anomalies():
            if count:
                logger.warning("Scan of %s: %s", self.root, line)
        raw_train = [t for t in raw if parts[t.part].case is None]
        raw_cases: dict[int, tuple[list[_RawTracklet], list[_RawTracklet]]] = {}
        for t in raw:
            part = parts[t.part]
            if part.case is not None:
                raw_cases.setdefault(part.case, ([], []))[CASE_PARTS.index(part.role)].append(t)

        camera_keys = {t.camera_key for t in raw}
        self.camera_index: dict[str, int] = dict(camera_index) if camera_index else standard_camera_index(camera_keys)
        self.num_cameras = max(self.camera_index.values()) + 1
        # Cameras the given table (a checkpoint's) does not know: an aerial one takes the table's first
        # aerial camera, so the SIE lookup stays in range; reported, never silent.
        aerial_ids = sorted(i for k, i in self.camera_index.items() if k != "ground")
        self.camera_fallback = {k: (aerial_ids[0] if aerial_ids and k != "ground" else 0)
                                for k in sorted(camera_keys - set(self.camera_index))}
        if self.camera_fallback:
            counts = Counter(t.camera_key for t in raw if t.camera_key in self.camera_fallback)
            logger.warning("Cameras unknown to the model's camera table %s: %s", self.camera_index, ", ".join(
                f"{k} ({counts[k]} tracklets) -> camera {i}" for k, i in self.camera_fallback.items()))

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
    def _parts(self) -> list[_Part]:
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
        parts = []
        if os.path.isdir(train_dir):
            parts.append(_Part(TRAIN_FOLDER, train_dir, None))
        else:
            logger.warning("No %s/ folder in %s: only the test cases are available", TRAIN_FOLDER, self.root)
        for case in sorted(present):
            for role, view in zip(CASE_PARTS, CASE_VIEWS[case]):
                part_dir = os.path.join(case_dirs[case], role)
                _check_folder(part_dir, f"{role} folder of {CASE_FOLDERS[case]}",
                              f"Each case folder holds query/ and gallery/; copy the complete test set into "
                              f"{self.root}. {EXPECTED_LAYOUT}")
                parts.append(_Part(f"{CASE_FOLDERS[case]}/{role}", part_dir, view, case, role))
        return parts

    def _scan(self) -> tuple[list[_Part], list[_RawTracklet]]:
        parts = self._parts()
        dirs = _walk_folders(parts, self.junk_rule)
        self._from_cache = False
        key = cache_file = None
        raw = None
        if self.scan_cache_dir:
            key = _cache_key(self.root, dirs, self.unknown_names_as_ground)
            cache_file = _cache_path(self.scan_cache_dir, self.root)
            _SCAN_CACHE_FILES[self.root] = cache_file
            raw = _load_scan_cache(cache_file, key, self.root, dirs, self.unknown_names_as_ground)
            self._from_cache = raw is not None
        if raw is None:
            raw = []
            for d in dirs:
                frames, info = _scan_tracklet(d.path, self.unknown_names_as_ground)
                fixed = parts[d.part].fixed_view
                raw.append(_RawTracklet(frames, d.pid, d.name, d.part, info, fixed or info.view))
            newest = max((d.mtime_ns for d in dirs), default=0) / 1e9
            if cache_file is not None and time.time() - newest > SCAN_CACHE_SETTLE_S:
                try:
                    _save_scan_cache(cache_file, key, self.root, raw)
                except OSError as exc:
                    logger.warning("Could not write the scan cache %s (%s); the next start scans again", cache_file, exc)
        if parts[0].case is None:
            _check_unique_names((t for t in raw if t.part == 0), parts[0].path)
        for case in sorted({p.case for p in parts if p.case is not None}):
            _check_unique_names((t for t in raw if parts[t.part].case == case), os.path.join(self.root, CASE_FOLDERS[case]))
        return parts, raw

    def _to_tracklet(self, raw: _RawTracklet) -> Tracklet:
        info = raw.info
        aerial = raw.view == "aerial"
        return Tracklet(
            frames=raw.frames, pid=raw.pid, camid=self.camera_index.get(raw.camera_key, self.camera_fallback.get(raw.camera_key)), view=raw.view,
            name=raw.name, session=raw.session, height=info.height if aerial else None,
            distance=info.distance if aerial else None, angle=info.angle if aerial else None,
            aerial_distance=info.aerial_distance if aerial else None,
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
        """A text table: identities, tracklets, frames per split/case, cameras, capture points and what
        the scanner understood of the names."""
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
        lines += self.scan_summary.lines()
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
