"""Search a gallery of your own tracklets with a trained checkpoint.

``python -m processor.search --model_path CKPT --query DIR_OR_GLOB --gallery DIR_OR_GLOB [--topk 10]
[--out results.csv] [--visualize N] [--cache F.npz] [--query_camera C] [--gallery_camera C]``

A tracklet is any folder that directly holds frame files (.jpg/.jpeg/.png); ``--query`` and
``--gallery`` name a folder (searched recursively for tracklet folders, so no DetReIDX layout or
frame names are needed) or a glob of folders. Tracklets are named by their path relative to that
folder. Writes a CSV with one row per (query, rank): ``query,rank,gallery_tracklet,distance``
(cosine distance 1 - cos, or as TEST.DISTANCE of the checkpoint says), best match first.
Embeddings are cached in an .npz keyed on the tracklet folder, its frame names, sizes, mtimes and
inode change times, the camera id and the checkpoint (path, inode, size, mtime, inode change time, test
settings): a second search over the same tracklets re-encodes nothing, and a frame or checkpoint
rewritten in place with its mtime restored is noticed (tools can restore an mtime, never a ctime).
Every reused row is checked (float32, the model's width, finite, unit length, its checksum) and
anything else is re-encoded, with a warning. The CSV is written first; a cache that cannot be written
is only a warning. A results file or a checkpoint producing NaN/Inf embeddings is an error, printed as
one line. Hidden files and folders (``.*``, e.g. macOS ``._frame.jpg``) are skipped; symbolic links
are followed, and one that loops or points nowhere, or a folder that cannot be read, is an error.
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from datasets.frame_sampling import SAMPLING_MODES
from processor.inference import GROUND_CAMERA, FeatureExtractor, InferenceInputError, list_frames, plain_tracklet
from utils.cli import fail, make_parser
from utils.fileio import atomic_write, write_text_atomic
from utils.metrics import compute_distance, rank_gallery
from utils.protocol import FRAME_EXTENSIONS, natural_sort_key

logger = logging.getLogger("search")

CSV_HEADER = ("query", "rank", "gallery_tracklet", "distance")


@dataclass(frozen=True)
class FoundTracklet:
    """A tracklet folder found under a --query/--gallery argument."""

    name: str                  # path relative to the searched folder (its own name when it is one)
    folder: str
    frames: tuple[str, ...]    # frame paths, naturally sorted


def _is_frame_name(name: str) -> bool:
    return name.lower().endswith(FRAME_EXTENSIONS) and not name.startswith(".")


def _scan_folder(folder: str, what: str, spec: str) -> tuple[bool, list[str]]:
    """(holds visible frame files, visible subfolders) of ``folder``; a folder that cannot be read or a
    symbolic link that loops or points nowhere is an InferenceInputError naming it."""
    holds_frames, subfolders = False, []
    try:
        with os.scandir(folder) as entries:
            entries = list(entries)
    except OSError as exc:
        raise InferenceInputError(f"Folder {folder} (under {what} {spec}) cannot be read ({exc.strerror or exc}). "
                                  f"Fix its permissions or leave it out.") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                subfolders.append(entry.path)
                continue
            if entry.is_file():
                holds_frames = holds_frames or _is_frame_name(entry.name)
                continue
        except OSError:
            pass
        if entry.is_symlink() and not os.path.exists(entry.path):
            raise InferenceInputError(f"{entry.path} (under {what} {spec}) is a symbolic link that loops or points "
                                      f"nowhere. Fix or remove the link.")
    return holds_frames, subfolders


def _walk(root: str, what: str, spec: str):
    """(folder, holds frames, has subfolders) for ``root`` and every visible folder below it, following
    symbolic links; a link back to a folder that contains it is an error (the walk would never end)."""
    stack = [(root, (os.path.realpath(root),))]
    while stack:
        folder, ancestors = stack.pop()
        holds_frames, subfolders = _scan_folder(folder, what, spec)
        yield folder, holds_frames, bool(subfolders)
        for sub in sorted(subfolders, key=natural_sort_key, reverse=True):
            real = os.path.realpath(sub)
            if real in ancestors:
                raise InferenceInputError(f"Folder {sub} (under {what} {spec}) is a symbolic link to {real}, which "
                                          f"contains it: the search would loop. Remove the link.")
            stack.append((sub, ancestors + (real,)))


def _glob_base(spec: str) -> str:
    """The deepest folder of ``spec`` without glob characters (names are made relative to it)."""
    parts = []
    for part in os.path.normpath(spec).split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or "."


def find_tracklets(spec: str, what: str) -> list[FoundTracklet]:
    """Every tracklet folder named by ``spec`` (a folder searched recursively, or a glob of folders).

    A folder without frames and without subfolders is an error (it would silently drop a tracklet).
    Raises InferenceInputError naming ``what`` (--query / --gallery) when nothing is found.
    """
    if glob.has_magic(spec):
        roots = sorted((p for p in glob.glob(spec) if os.path.isdir(p)), key=natural_sort_key)
        base = _glob_base(spec)
        if not roots:
            raise InferenceInputError(f"{what} {spec!r} matches no folder")
    else:
        if not os.path.isdir(spec):
            raise InferenceInputError(f"{what} {spec!r} is not a folder: give a folder of tracklet folders or a glob")
        roots, base = [spec], spec
    found: dict[str, FoundTracklet] = {}
    for root in roots:
        for folder, holds_frames, has_subfolders in _walk(root, what, spec):
            if holds_frames:
                rel = os.path.relpath(folder, base)
                name = os.path.basename(os.path.abspath(folder)) if rel == "." else rel
                frames = tuple(f for f in list_frames(folder) if _is_frame_name(os.path.basename(f)))
                found[os.path.abspath(folder)] = FoundTracklet(name, folder, frames)
            elif not has_subfolders and folder != root:
                raise InferenceInputError(
                    f"Folder {folder} (under {what} {spec}) holds no frames ({'/'.join(FRAME_EXTENSIONS)} files) "
                    "and no tracklet folders. Copy its frames there or remove it."
                )
    if not found:
        raise InferenceInputError(f"{what} {spec!r} holds no tracklet folders (folders of frame files)")
    return sorted(found.values(), key=lambda t: natural_sort_key(t.name))


# ----------------------------------------------------------------------------- feature cache
CACHE_VERSION = 2           # 2: per-row checksums, inode change times in the keys
ROW_DIGEST_BYTES = 16
UNIT_NORM_TOLERANCE = 1e-2  # embeddings are L2-normalised; bf16/fp16 autocast leaves them within ~1e-3 of 1


def _file_identity(path: str) -> list[int]:
    """What identifies a file's content without reading it: inode, size, mtime and inode change time.
    Rewriting it in place (even with the mtime set back) or replacing it changes the ctime or the inode."""
    stat = os.stat(path)
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def model_cache_key(model_path: str, cfg) -> str:
    """Identifies the checkpoint file (path, inode, size, mtime, ctime) and every setting that changes an embedding."""
    parts = [os.path.abspath(model_path), *_file_identity(model_path), cfg.TEST.SEQ_LEN, cfg.TEST.SAMPLING,
             cfg.SOLVER.AMP, str(cfg.MODEL.DEVICE), list(cfg.INPUT.SIZE_TEST)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def tracklet_cache_key(tracklet: FoundTracklet, camid: int) -> str:
    """Folder, camera id, and each frame's name, inode, size, mtime and ctime: any change to a frame gives a new key."""
    parts = [os.path.abspath(tracklet.folder), int(camid)]
    for frame in tracklet.frames:
        parts.append((os.path.basename(frame), *_file_identity(frame)))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _row_digest(model_key: str, key: str, row: np.ndarray) -> bytes:
    digest = hashlib.sha256(f"{model_key}\0{key}\0{row.dtype.str}\0{row.shape}\0".encode())
    digest.update(np.ascontiguousarray(row).tobytes())
    return digest.digest()[:ROW_DIGEST_BYTES]


class FeatureCache:
    """Embeddings by tracklet key, stored in one .npz (version, model_key, keys (N,), features (N, E) float32,
    digests (N, 16) uint8: a checksum of each row with its key and the model key).

    A row is reused only when it passes :meth:`check` (float32, the model's width, finite, unit length, its
    checksum); the reasons rows were refused are counted in ``refused``.
    """

    def __init__(self, path: str | None, model_key: str):
        self.path = path
        self.model_key = model_key
        self.features: dict[str, np.ndarray] = {}
        self.digests: dict[str, bytes] = {}
        self.refused: Counter = Counter()
        self.changed = False
        if path and os.path.isfile(path):
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["version"]) if "version" in data.files else 1
                if version != CACHE_VERSION:
                    logger.info("Feature cache %s has format %d, not %d: re-encoding", path, version, CACHE_VERSION)
                    return
                if str(data["model_key"]) != self.model_key:
                    logger.info("Feature cache %s belongs to another checkpoint or setting: re-encoding", path)
                    return
                keys, features, digests = data["keys"], data["features"], data["digests"]
            if features.ndim != 2 or keys.shape != (len(features),) or digests.shape != (len(features), ROW_DIGEST_BYTES):
                raise ValueError(f"arrays of shapes keys {keys.shape}, features {features.shape}, digests {digests.shape}")
            self.features = {str(k): row for k, row in zip(keys, features)}     # dtype as stored: check() sees it
            self.digests = {str(k): bytes(d.astype(np.uint8)) for k, d in zip(keys, digests)}
        except Exception as exc:  # noqa: BLE001 - a damaged cache is only a lost speed-up
            logger.warning("Ignoring unreadable feature cache %s (%s: %s); it will be rewritten",
                           path, type(exc).__name__, exc)
            self.features, self.digests = {}, {}

    def check(self, key: str, row: np.ndarray, dim: int) -> str | None:
        """Why a cached row cannot be reused for an embedding of width ``dim``, or None."""
        if row.dtype != np.float32:
            return f"dtype {row.dtype}"
        if row.shape != (dim,):
            return f"width {row.shape[-1] if row.ndim else 0}, not {dim}"
        if not np.isfinite(row).all():
            return "non-finite values"
        if abs(float(np.linalg.norm(row.astype(np.float64))) - 1.0) > UNIT_NORM_TOLERANCE:
            return "not unit length"
        if self.digests.get(key) != _row_digest(self.model_key, key, row):
            return "checksum mismatch"
        return None

    def get(self, key: str, dim: int) -> np.ndarray | None:
        """The cached row of ``key`` when it passes :meth:`check` for width ``dim``, else None."""
        row = self.features.get(key)
        if row is None:
            return None
        problem = self.check(key, row, dim)
        if problem is not None:
            self.refused[problem] += 1
            return None
        return row

    def put(self, key: str, feature: np.ndarray) -> None:
        feature = np.asarray(feature, dtype=np.float32)
        self.features[key] = feature
        self.digests[key] = _row_digest(self.model_key, key, feature)
        self.changed = True

    def save(self, dim: int | None = None) -> None:
        """Write every row that passes :meth:`check` (of width ``dim``; default: the newest row's width)."""
        if not self.path or not self.changed or not self.features:
            return
        if dim is None:
            dim = next(reversed(self.features.values())).shape[-1]
        keys = sorted(k for k, row in self.features.items() if self.check(k, row, dim) is None)
        features = np.stack([self.features[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        digests = np.array([np.frombuffer(self.digests[k], np.uint8) for k in keys], np.uint8).reshape(-1, ROW_DIGEST_BYTES)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, version=np.array(CACHE_VERSION), model_key=np.array(self.model_key), keys=np.array(keys),
                         features=features, digests=digests)

        atomic_write(self.path, write)
        self.changed = False


def embed_cached(extractor: FeatureExtractor, tracklets: Sequence[FoundTracklet], camid: int,
                 cache: FeatureCache, desc: str) -> np.ndarray:
    """(N,) tracklets -> (N, E) float32 L2-normalised embeddings; only cache misses and cached rows that fail
    their check are encoded."""
    keys = [tracklet_cache_key(t, camid) for t in tracklets]
    dim = extractor.embedding_dim
    cache.refused.clear()
    missing = [i for i, key in enumerate(keys) if cache.get(key, dim) is None]
    if cache.refused:
        logger.warning("%s: %d cached embeddings failed their check (%s) and are re-encoded; the cache %s is "
                       "rewritten", desc, sum(cache.refused.values()),
                       ", ".join(f"{n} {why}" for why, n in sorted(cache.refused.items())), cache.path)
    logger.info("%s: %d tracklets, %d cached, %d to encode", desc, len(keys), len(keys) - len(missing), len(missing))
    if missing:
        records = [plain_tracklet(tracklets[i].frames, camid, tracklets[i].name) for i in missing]
        features = extractor.embed_tracklets(records, desc=desc).numpy()  # NonFiniteFeaturesError: nothing cached
        for i, feature in zip(missing, features):
            cache.put(keys[i], feature)
    return np.stack([cache.features[key] for key in keys]).astype(np.float32)   # each row checked or just encoded


# ----------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    queries: list[FoundTracklet]
    gallery: list[FoundTracklet]
    ranking: np.ndarray        # (Q, k) gallery indices, best first
    distances: np.ndarray      # (Q, k) the matching distances


def search(extractor: FeatureExtractor, queries: Sequence[FoundTracklet], gallery: Sequence[FoundTracklet],
           topk: int = 10, cache: FeatureCache | None = None, query_camera: int = GROUND_CAMERA,
           gallery_camera: int = GROUND_CAMERA) -> SearchResult:
    """Rank ``gallery`` for every query by TEST.DISTANCE of the checkpoint on L2-normalised embeddings."""
    cache = cache or FeatureCache(None, "")
    qf = embed_cached(extractor, queries, query_camera, cache, "query")
    gf = embed_cached(extractor, gallery, gallery_camera, cache, "gallery")
    cfg = extractor.cfg
    distmat = compute_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric=cfg.TEST.DISTANCE,
                               chunk=cfg.TEST.QUERY_CHUNK)
    ranking = rank_gallery(distmat, chunk=cfg.TEST.QUERY_CHUNK, topk=topk)
    distances = np.take_along_axis(distmat.numpy(), ranking.astype(np.int64), axis=1)
    return SearchResult(list(queries), list(gallery), ranking, distances)


def write_results_csv(path: str, result: SearchResult) -> None:
    """``query,rank,gallery_tracklet,distance`` rows (rank from 1), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for qi, query in enumerate(result.queries):
        for rank, (gi, dist) in enumerate(zip(result.ranking[qi], result.distances[qi]), start=1):
            writer.writerow((query.name, rank, result.gallery[int(gi)].name, f"{float(dist):.6f}"))
    write_text_atomic(path, buffer.getvalue())


def write_ranklists(out_dir: str, result: SearchResult, count: int) -> list[str]:
    """Rank-list pictures of ``count`` queries with each result's distance. No identities are known, so
    every result is framed in the neutral "unlabelled" colour (none is claimed right or wrong)."""
    from utils.visualize import visualize_ranklists

    queries = [plain_tracklet(t.frames, GROUND_CAMERA, t.name.replace(os.sep, "_")) for t in result.queries]
    gallery = [plain_tracklet(t.frames, GROUND_CAMERA, t.name.replace(os.sep, "_")) for t in result.gallery]
    return visualize_ranklists(out_dir, queries, gallery, result.ranking, q_pids=None, g_pids=None,
                               num_queries=count, topk=result.ranking.shape[1], distances=result.distances)


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--model_path", required=True, help="checkpoint written by train.py")
    parser.add_argument("--query", required=True, help="folder of query tracklet folders, or a glob of folders")
    parser.add_argument("--gallery", required=True, help="folder of gallery tracklet folders, or a glob of folders")
    parser.add_argument("--topk", type=int, default=10, help="gallery entries per query in the CSV (default 10)")
    parser.add_argument("--out", default="search_results.csv", help="results CSV (default search_results.csv)")
    parser.add_argument("--visualize", type=int, default=0, help="write rank-list pictures of N queries next to --out")
    parser.add_argument("--cache", default="", help="feature cache .npz (default: search_features.npz next to --out; "
                                                     "'none' disables it)")
    parser.add_argument("--query_camera", type=int, default=GROUND_CAMERA, help="camera id of the queries (0 = ground)")
    parser.add_argument("--gallery_camera", type=int, default=GROUND_CAMERA, help="camera id of the gallery (0 = ground)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--amp", default="auto", help="autocast: auto, bf16, fp16 or off")
    parser.add_argument("--sampling", default=None, choices=SAMPLING_MODES, help="test sampling (default: the checkpoint's)")
    parser.add_argument("--num_workers", type=int, default=None, help="loader workers (default: the checkpoint's)")
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    return args


def _error_message(exc: BaseException) -> str:
    """One readable line: errors re-raised from loader workers carry the worker's traceback text."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(exc):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return str(exc)


def save_cache(cache: FeatureCache) -> bool:
    """Write the feature cache; a failure is logged as a warning (the cache is only a speed-up)."""
    try:
        cache.save()
    except OSError as exc:  # WriteFailure (disk full, read-only, no permission, ...)
        logger.warning("Feature cache not saved (%s); the next search re-encodes these tracklets", exc)
        return False
    return True


def main(argv=None) -> SearchResult:
    """Search and write the CSV; run through utils.cli.run_main, which prints write failures and
    non-finite features as one line. Input errors exit here with one line (utils.cli.fail)."""
    args = parse_args(argv)
    from datasets.video import CorruptFrameError
    from model.weights import PretrainedWeightsError
    from utils.checkpoint import CheckpointError

    from utils.logger import setup_logging

    setup_logging(None)   # the console format of train.py and evaluate_all_cases.py
    try:
        queries = find_tracklets(args.query, "--query")
        gallery = find_tracklets(args.gallery, "--gallery")
        extractor = FeatureExtractor.from_checkpoint(args.model_path, device=args.device, amp=args.amp,
                                                     sampling=args.sampling, num_workers=args.num_workers)
        cache_path = None if args.cache.lower() == "none" else (
            args.cache or os.path.join(os.path.dirname(os.path.abspath(args.out)), "search_features.npz"))
        cache = FeatureCache(cache_path, model_cache_key(args.model_path, extractor.cfg))
        result = search(extractor, queries, gallery, topk=args.topk, cache=cache,
                        query_camera=args.query_camera, gallery_camera=args.gallery_camera)
    except (CheckpointError, InferenceInputError, PretrainedWeightsError, CorruptFrameError) as exc:
        fail(_error_message(exc))   # the one "error: ..." line of every command
    write_results_csv(args.out, result)  # before the cache: results are never lost to a cache failure
    logger.info("Ranked %d gallery tracklets for %d queries; wrote %s", len(gallery), len(queries), args.out)
    save_cache(cache)
    if args.visualize > 0:
        folder = os.path.join(os.path.dirname(os.path.abspath(args.out)), "ranklists")
        write_ranklists(folder, result, args.visualize)
    return result


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
