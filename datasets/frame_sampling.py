"""Temporal sampling: which frames of a tracklet form a clip of ``seq_len`` frames.

All functions return frame indices (numpy int64) into a tracklet of ``num_frames`` frames, in
temporal order. Tracklets shorter than ``seq_len`` are padded by repeating their last frame.
"""
from __future__ import annotations

import numpy as np

SAMPLING_MODES = ("blocks", "even", "dense")


def _check(num_frames: int, seq_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"A tracklet needs at least one frame, got num_frames={num_frames}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len} (DATALOADER.SEQ_LEN / TEST.SEQ_LEN)")


def padded_frame_indices(num_frames: int, seq_len: int) -> np.ndarray:
    """0..num_frames-1, then the last index repeated up to ``seq_len`` entries: (max(num_frames, seq_len),)."""
    _check(num_frames, seq_len)
    indices = np.arange(num_frames, dtype=np.int64)
    if num_frames < seq_len:
        indices = np.concatenate([indices, np.full(seq_len - num_frames, num_frames - 1, dtype=np.int64)])
    return indices


def block_bounds(length: int, seq_len: int) -> np.ndarray:
    """Start/end of ``seq_len`` equal blocks over ``length`` items, the last taking the remainder: (seq_len, 2)."""
    size = length // seq_len
    starts = np.arange(seq_len, dtype=np.int64) * size
    ends = starts + size
    ends[-1] = length
    return np.stack([starts, ends], axis=1)


def restricted_random_indices(num_frames: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Training sampling: split the padded frame list into ``seq_len`` equal blocks (the last takes
    the remainder) and draw one frame uniformly inside each block: (seq_len,)."""
    padded = padded_frame_indices(num_frames, seq_len)
    bounds = block_bounds(len(padded), seq_len)
    picks = bounds[:, 0] + np.floor(rng.random(seq_len) * (bounds[:, 1] - bounds[:, 0])).astype(np.int64)
    return padded[picks]


def even_indices(num_frames: int, seq_len: int) -> np.ndarray:
    """Test sampling: ``seq_len`` evenly spaced frames, deterministic: (seq_len,).

    Frame ``floor(i * n / seq_len)`` for i = 0..seq_len-1, i.e. the start of each of ``seq_len``
    equal (fractional) blocks, so the whole tracklet is covered; integer block sizes would leave
    up to ``seq_len - 1`` trailing frames unseen. Short tracklets are padded with the last frame.
    """
    _check(num_frames, seq_len)
    if num_frames < seq_len:
        return padded_frame_indices(num_frames, seq_len)
    return (np.arange(seq_len, dtype=np.int64) * num_frames) // seq_len


def block_start_indices(num_frames: int, seq_len: int) -> np.ndarray:
    """Test sampling of the authors' code: the first frame of each of ``seq_len`` integer blocks: (seq_len,).

    Frame ``i * (n // seq_len)`` for i = 0..seq_len-1 after padding short tracklets with their last
    frame. With integer blocks up to ``seq_len - 1`` trailing frames are never chosen (a 31-frame
    tracklet at 16 frames gives frames 0..15); "even" spreads the picks over the whole tracklet.
    """
    padded = padded_frame_indices(num_frames, seq_len)
    return padded[np.arange(seq_len, dtype=np.int64) * (len(padded) // seq_len)]


def dense_chunks(num_frames: int, seq_len: int) -> list[np.ndarray]:
    """All frames in consecutive chunks of ``seq_len`` (the last chunk padded with the last frame):
    ceil(num_frames / seq_len) arrays of shape (seq_len,)."""
    _check(num_frames, seq_len)
    num_chunks = -(-num_frames // seq_len)
    indices = np.minimum(np.arange(num_chunks * seq_len, dtype=np.int64), num_frames - 1)
    return list(indices.reshape(num_chunks, seq_len))


def inference_clips(num_frames: int, seq_len: int, mode: str) -> list[np.ndarray]:
    """Clips of one tracklet at test time: one for "blocks" and "even", several for "dense"."""
    if mode == "blocks":
        return [block_start_indices(num_frames, seq_len)]
    if mode == "even":
        return [even_indices(num_frames, seq_len)]
    if mode == "dense":
        return dense_chunks(num_frames, seq_len)
    raise ValueError(f"Unknown TEST.SAMPLING {mode!r}; use one of {SAMPLING_MODES}")
