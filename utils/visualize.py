"""Rank-list pictures: a query tracklet followed by its top-k gallery tracklets, a few frames each;
true matches framed green, other identities red, the query's own tracklet (junk under the
challenge rule) grey, the query blue. Without identities (your own tracklets, an anonymised test
set) every result is framed in one neutral dark grey: nothing is claimed right or wrong. Given the
distances, each result's header shows its rank, name and distance."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import cv2
import numpy as np

from utils.fileio import ensure_folder, write_bytes_atomic

logger = logging.getLogger(__name__)

FRAME_SIZE = (64, 128)          # (width, height) of one frame in a tile
BORDER = 4
HEADER = 18                     # pixels of text above each tile (one line)
HEADER_LINE = 14                # pixels of each further line (the distance)
GAP = 6
COLOURS = {"query": (200, 120, 0), "match": (0, 180, 0), "other": (0, 0, 220), "junk": (150, 150, 150),
           "unlabelled": (70, 70, 70)}  # BGR


def _evenly_spaced(count: int, wanted: int) -> list[int]:
    if count <= 0 or wanted <= 0:
        return []
    return sorted(set(np.linspace(0, count - 1, min(wanted, count)).round().astype(int).tolist()))


def _tile(frames: Sequence[str], frames_per_tracklet: int, colour: tuple[int, int, int], text: str | Sequence[str],
          lines: int = 1) -> np.ndarray:
    """A (header + h + 2 BORDER, f * w + 2 BORDER, 3) uint8 tile: frames side by side in a coloured frame under
    ``lines`` lines of text (header = HEADER + (lines - 1) * HEADER_LINE pixels)."""
    width, height = FRAME_SIZE
    images = []
    for index in _evenly_spaced(len(frames), frames_per_tracklet):
        image = cv2.imread(frames[index], cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("Rank-list picture: cannot read frame %s; drawing a grey placeholder", frames[index])
            image = np.full((height, width, 3), 128, dtype=np.uint8)
        images.append(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    while len(images) < frames_per_tracklet:      # short tracklets keep the grid aligned
        images.append(np.full((height, width, 3), 255, dtype=np.uint8))
    body = cv2.copyMakeBorder(np.concatenate(images, axis=1), BORDER, BORDER, BORDER, BORDER,
                              cv2.BORDER_CONSTANT, value=colour)
    texts = [text] if isinstance(text, str) else list(text)
    header = np.full((HEADER + (lines - 1) * HEADER_LINE, body.shape[1], 3), 255, dtype=np.uint8)
    for row, line in enumerate(texts[:lines]):
        cv2.putText(header, line[:max(4, body.shape[1] // 7)], (2, HEADER - 5 + row * HEADER_LINE),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, body], axis=0)


def has_labels(q_pids, g_pids) -> bool:
    """Whether the pids can tell true matches: given, and some query identity occurs in the gallery
    (an anonymised test set's pids never do)."""
    if q_pids is None or g_pids is None:
        return False
    return bool(np.isin(np.asarray(q_pids), np.asarray(g_pids)).any())


def ranklist_entries(query_name: str, gallery_names: Sequence[str], ranking_row, q_pid=None, g_pids=None,
                     distances_row=None, labelled: bool = True) -> list[tuple[str, list[str]]]:
    """(kind, text lines) of each shown gallery entry, best first: kind is a COLOURS key ("match",
    "other", "junk" for the query's own tracklet, "unlabelled" when ``labelled`` is False); the lines
    are ``"<rank> <name>"`` and, with ``distances_row``, ``"d <distance>"``."""
    entries = []
    for rank, gi in enumerate(np.asarray(ranking_row).tolist()):
        name = gallery_names[gi]
        if name == query_name:
            kind = "junk"
        elif not labelled:
            kind = "unlabelled"
        else:
            kind = "match" if g_pids[gi] == q_pid else "other"
        lines = [f"{rank + 1} {name}"]
        if distances_row is not None:
            lines.append(f"d {float(distances_row[rank]):.4f}")
        entries.append((kind, lines))
    return entries


def _write_png_atomic(path: str, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    write_bytes_atomic(path, encoded.tobytes())   # usual file mode; a failed write is a WriteFailure


def visualize_ranklists(out_dir: str, queries: Sequence, galleries: Sequence, ranking, q_pids=None, g_pids=None,
                        num_queries: int = 10, topk: int = 10, frames_per_tracklet: int = 3,
                        distances=None) -> list[str]:
    """Write one PNG per shown query into ``out_dir``; returns their paths.

    queries (Q,), galleries (G,) Tracklet records (fields frames, name); ranking (Q, >= topk)
    gallery indices best first (``utils.metrics.rank_gallery``); q_pids (Q,), g_pids (G,) colour true
    matches green and other identities red, but only when they carry ground truth (:func:`has_labels`);
    without it (None, or an anonymised test set) every result is framed "unlabelled" grey. distances
    (Q, >= topk), in the order of ``ranking``, are written under each result's name. ``num_queries``
    queries are taken evenly spaced over the query list (deterministic).
    """
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or ranking.shape[0] != len(queries):
        raise ValueError(f"ranking must be (num_queries={len(queries)}, >= topk), got {ranking.shape}")
    if distances is not None:
        distances = np.asarray(distances)
        if distances.shape[0] != ranking.shape[0] or distances.shape[1] < min(topk, ranking.shape[1]):
            raise ValueError(f"distances must be (num_queries={len(queries)}, >= topk) like ranking {ranking.shape}, "
                             f"got {distances.shape}")
    topk = min(topk, ranking.shape[1])
    labelled = has_labels(q_pids, g_pids)
    lines = 1 if distances is None else 2
    gallery_names = [g.name for g in galleries]
    ensure_folder(out_dir)
    paths = []
    for qi in _evenly_spaced(len(queries), num_queries):
        query = queries[qi]
        tiles = [_tile(query.frames, frames_per_tracklet, COLOURS["query"], f"Q {query.name}", lines)]
        entries = ranklist_entries(query.name, gallery_names, ranking[qi, :topk],
                                   q_pids[qi] if labelled else None, g_pids if labelled else None,
                                   None if distances is None else distances[qi, :topk], labelled)
        for gi, (kind, text) in zip(ranking[qi, :topk].tolist(), entries):
            tiles.append(_tile(galleries[gi].frames, frames_per_tracklet, COLOURS[kind], text, lines))
        spacer = np.full((tiles[0].shape[0], GAP, 3), 255, dtype=np.uint8)
        row = np.concatenate([part for tile in tiles for part in (tile, spacer)][:-1], axis=1)
        path = os.path.join(out_dir, f"ranklist_{qi:05d}_{query.name}.png")
        _write_png_atomic(path, row)
        paths.append(path)
    logger.info("Wrote %d rank-list pictures to %s", len(paths), out_dir)
    return paths
