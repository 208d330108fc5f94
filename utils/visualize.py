"""Rank-list pictures: a query tracklet followed by its top-k gallery tracklets, a few frames each;
true matches framed green, other identities red, the query's own tracklet (junk under the
challenge rule) grey, the query blue."""
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
HEADER = 18                     # pixels of text above each tile
GAP = 6
COLOURS = {"query": (200, 120, 0), "match": (0, 180, 0), "other": (0, 0, 220), "junk": (150, 150, 150)}  # BGR


def _evenly_spaced(count: int, wanted: int) -> list[int]:
    if count <= 0 or wanted <= 0:
        return []
    return sorted(set(np.linspace(0, count - 1, min(wanted, count)).round().astype(int).tolist()))


def _tile(frames: Sequence[str], frames_per_tracklet: int, colour: tuple[int, int, int], text: str) -> np.ndarray:
    """A (HEADER + h + 2 BORDER, f * w + 2 BORDER, 3) uint8 tile: frames side by side in a coloured frame."""
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
    header = np.full((HEADER, body.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(header, text[:max(4, body.shape[1] // 7)], (2, HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, body], axis=0)


def _write_png_atomic(path: str, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    write_bytes_atomic(path, encoded.tobytes())   # usual file mode; a failed write is a WriteFailure


def visualize_ranklists(out_dir: str, queries: Sequence, galleries: Sequence, ranking, q_pids, g_pids,
                        num_queries: int, topk: int = 10, frames_per_tracklet: int = 3) -> list[str]:
    """Write one PNG per shown query into ``out_dir``; returns their paths.

    queries (Q,), galleries (G,) Tracklet records (fields frames, name); ranking (Q, >= topk)
    gallery indices best first (``utils.metrics.rank_gallery``); q_pids (Q,), g_pids (G,) used to
    colour true matches (nothing is green when the pids carry no ground truth). ``num_queries``
    queries are taken evenly spaced over the query list (deterministic).
    """
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or ranking.shape[0] != len(queries):
        raise ValueError(f"ranking must be (num_queries={len(queries)}, >= topk), got {ranking.shape}")
    topk = min(topk, ranking.shape[1])
    ensure_folder(out_dir)
    paths = []
    for qi in _evenly_spaced(len(queries), num_queries):
        query = queries[qi]
        tiles = [_tile(query.frames, frames_per_tracklet, COLOURS["query"], f"Q {query.name}")]
        for rank, gi in enumerate(ranking[qi, :topk].tolist()):
            candidate = galleries[gi]
            if candidate.name == query.name:
                kind = "junk"
            elif g_pids[gi] == q_pids[qi]:
                kind = "match"
            else:
                kind = "other"
            tiles.append(_tile(candidate.frames, frames_per_tracklet, COLOURS[kind], f"{rank + 1} {candidate.name}"))
        spacer = np.full((tiles[0].shape[0], GAP, 3), 255, dtype=np.uint8)
        row = np.concatenate([part for tile in tiles for part in (tile, spacer)][:-1], axis=1)
        path = os.path.join(out_dir, f"ranklist_{qi:05d}_{query.name}.png")
        _write_png_atomic(path, row)
        paths.append(path)
    logger.info("Wrote %d rank-list pictures to %s", len(paths), out_dir)
    return paths
