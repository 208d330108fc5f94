"""Clip-consistent transforms: every random decision is drawn once per clip and applied to all frames.

A clip travels as a uint8 RGB array (T,H,W,3) through resizing (bicubic, antialiased when
shrinking, as PIL) and the photometric/geometric augmentations (OpenCV on the whole clip at once:
a (T,H,W,3) array reshaped to (T*H,W,3) is one image to cv2), then becomes a normalised float tensor (T,3,H,W), on which random erasing works.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_AREA = (0.02, 0.4)      # erased fraction of the frame area
ERASE_ASPECT = (0.3, 1 / 0.3)  # erased box height / width
ERASE_ATTEMPTS = 100


def resize_frames(frames: Sequence[np.ndarray], size: Sequence[int]) -> np.ndarray:
    """Bicubic resize of each frame (H_i,W_i,3 uint8) to ``size`` = (H,W) as PIL does it: (T,H,W,3) uint8.

    PIL's ``Image.resize(BICUBIC)`` (what the authors and CLIP's preprocessing use) antialiases when
    it shrinks: the kernel widens by the shrink factor. ``cv2.INTER_CUBIC`` does not (on a detailed
    frame shrunk 4x it differs from PIL by ~39 grey levels on average). A frame shrunk along either
    axis therefore goes through torch's uint8 antialiased bicubic, which reproduces PIL within a grey
    level; a frame enlarged along both axes (nothing to antialias) through ``cv2.INTER_CUBIC``, about
    5x faster there and within a few grey levels of PIL (its kernel is a little sharper).
    """
    height, width = int(size[0]), int(size[1])
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    out_view = torch.from_numpy(out)  # (T,H,W,3), shares memory with ``out``
    for i, frame in enumerate(frames):
        if frame.shape[0] == height and frame.shape[1] == width:
            out[i] = frame
        elif frame.shape[0] <= height and frame.shape[1] <= width:
            out[i] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC)
        else:
            source = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0)  # (1,3,H_i,W_i)
            resized = F.interpolate(source, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
            out_view[i] = resized[0].permute(1, 2, 0)
    return out


def flip_clip(clip: np.ndarray) -> np.ndarray:
    """Horizontal flip of every frame of (T,H,W,3)."""
    return cv2.flip(_as_image(clip), 1).reshape(clip.shape)


def lowres_clip(clip: np.ndarray, factor: float) -> np.ndarray:
    """Simulate a far-away capture: downscale every frame by ``factor`` (area), upscale back (bicubic)."""
    t, h, w, _ = clip.shape
    small_w, small_h = max(int(round(w * factor)), 1), max(int(round(h * factor)), 1)
    out = np.empty_like(clip)
    for i in range(t):
        small = cv2.resize(clip[i], (small_w, small_h), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return out


def _as_image(clip: np.ndarray) -> np.ndarray:
    t, h, w, c = clip.shape
    return clip.reshape(t * h, w, c)


def hue_shift_clip(clip: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of every frame by ``shift`` (fraction of the hue circle, any sign)."""
    hsv = cv2.cvtColor(_as_image(clip), cv2.COLOR_RGB2HSV_FULL)   # hue in 0..255 = full circle
    delta = int(round(shift * 256.0)) % 256
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + delta).astype(np.uint8)  # wraps modulo 256 = circular
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).reshape(clip.shape)


def adjust_brightness_clip(clip: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(clip.astype(np.float32) * factor, 0, 255).round().astype(np.uint8)


def adjust_contrast_clip(clip: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the clip's mean grey level (one level for the whole clip)."""
    grey = cv2.cvtColor(_as_image(clip), cv2.COLOR_RGB2GRAY)
    mean = float(grey.mean())
    return np.clip(mean + (clip.astype(np.float32) - mean) * factor, 0, 255).round().astype(np.uint8)


def adjust_saturation_clip(clip: np.ndarray, factor: float) -> np.ndarray:
    """Blend every pixel with its own grey value."""
    grey = cv2.cvtColor(_as_image(clip), cv2.COLOR_RGB2GRAY).reshape(*clip.shape[:3], 1).astype(np.float32)
    return np.clip(grey + (clip.astype(np.float32) - grey) * factor, 0, 255).round().astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _normalisation_tables(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Per channel, the 256 normalised values (v/255 - mean) / std as float32 look-up tables."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    return tuple(((levels - m) / s).astype(np.float32) for m, s in zip(mean, std))


def to_normalized_tensor(clip: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(T,H,W,3) uint8 -> (T,3,H,W) float32 contiguous, (x/255 - mean) / std.

    One table look-up per channel plane (cv2.LUT) does the conversion, scaling, normalisation and
    the move to channels-first in a single pass; about 6x faster than the same in float torch ops.
    """
    t, h, w, _ = clip.shape
    tables = _normalisation_tables(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    planes = cv2.split(_as_image(np.ascontiguousarray(clip)))
    out = np.empty((t, 3, h, w), dtype=np.float32)
    for channel, (plane, table) in enumerate(zip(planes, tables)):
        out[:, channel] = cv2.LUT(plane, table).reshape(t, h, w)
    return torch.from_numpy(out)


def sample_erase_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """A random box (top, left, box_h, box_w) for random erasing, or None if no attempt fitted."""
    area = height * width
    for _ in range(ERASE_ATTEMPTS):
        target = rng.uniform(*ERASE_AREA) * area
        aspect = math.exp(rng.uniform(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])))
        box_h = int(round(math.sqrt(target * aspect)))
        box_w = int(round(math.sqrt(target / aspect)))
        if 0 < box_h < height and 0 < box_w < width:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return top, left, box_h, box_w
    return None


def erase_clip(clip: torch.Tensor, box: tuple[int, int, int, int],
               value: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Erase the same box in every frame of a normalised (T,3,H,W) clip with ``value`` (one number, or
    one per channel; written into the normalised tensor, so 0 is the mean colour)."""
    top, left, box_h, box_w = box
    fill = torch.as_tensor(value, dtype=clip.dtype).reshape(-1, 1, 1)
    clip[:, :, top:top + box_h, left:left + box_w] = fill.expand(clip.shape[1], box_h, box_w)
    return clip


@dataclass(frozen=True)
class ClipTransform:
    """Frames (list of H_i,W_i,3 uint8 RGB) -> normalised clip tensor (T,3,H,W) float32.

    With ``train`` False only the resize and normalisation run (deterministic). With ``train`` True
    each augmentation happens with its probability, decided once per clip.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train: bool = False
    flip_prob: float = 0.5
    erase_prob: float = 0.5
    erase_fill: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hue_prob: float = 0.5
    hue: float = 0.3
    jitter_prob: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    lowres_prob: float = 0.0
    lowres_scale: tuple[float, float] = (0.1, 0.5)

    @classmethod
    def from_cfg(cls, cfg, train: bool) -> "ClipTransform":
        inp = cfg.INPUT
        size = inp.SIZE_TRAIN if train else inp.SIZE_TEST
        for key, value in (("INPUT.SIZE_TRAIN" if train else "INPUT.SIZE_TEST", size), ("INPUT.LOWRES_SCALE", inp.LOWRES_SCALE)):
            if len(value) != 2:
                raise ValueError(f"{key} must be a pair, got {list(value)}")
        lo, hi = inp.LOWRES_SCALE
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"INPUT.LOWRES_SCALE must satisfy 0 < min <= max <= 1, got {list(inp.LOWRES_SCALE)}")
        for key in ("FLIP_PROB", "ERASE_PROB", "HUE_PROB", "JITTER_PROB", "LOWRES_PROB"):
            if not 0.0 <= float(inp[key]) <= 1.0:
                raise ValueError(f"INPUT.{key} is a probability in [0, 1], got {inp[key]}")
        if len(inp.ERASE_FILL) != 3:
            raise ValueError(f"INPUT.ERASE_FILL needs one value per channel (3), got {list(inp.ERASE_FILL)}")
        if not 0.0 <= float(inp.HUE) <= 0.5:
            raise ValueError(f"INPUT.HUE must be in [0, 0.5] (fraction of the hue circle), got {inp.HUE}")
        return cls(
            size=(int(size[0]), int(size[1])), mean=tuple(inp.PIXEL_MEAN), std=tuple(inp.PIXEL_STD), train=train,
            flip_prob=float(inp.FLIP_PROB), erase_prob=float(inp.ERASE_PROB),
            erase_fill=tuple(float(v) for v in inp.ERASE_FILL), hue_prob=float(inp.HUE_PROB),
            hue=float(inp.HUE), jitter_prob=float(inp.JITTER_PROB), brightness=float(inp.BRIGHTNESS),
            contrast=float(inp.CONTRAST), saturation=float(inp.SATURATION), lowres_prob=float(inp.LOWRES_PROB),
            lowres_scale=(float(lo), float(hi)),
        )

    def __call__(self, frames: Sequence[np.ndarray], rng: np.random.Generator | None = None) -> torch.Tensor:
        clip = resize_frames(frames, self.size)
        if not self.train:
            return to_normalized_tensor(clip, self.mean, self.std)
        if rng is None:
            raise ValueError("A training ClipTransform needs a numpy Generator (one draw per clip)")
        # Decisions are drawn in a fixed order, each exactly once, whether or not it applies.
        lowres = rng.random() < self.lowres_prob
        factor = rng.uniform(*self.lowres_scale)
        flip = rng.random() < self.flip_prob
        jitter = rng.random() < self.jitter_prob
        jitter_factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in (self.brightness, self.contrast, self.saturation)]
        hue = rng.random() < self.hue_prob
        hue_shift = rng.uniform(-self.hue, self.hue)
        erase = rng.random() < self.erase_prob
        box = sample_erase_box(self.size[0], self.size[1], rng)

        if lowres:
            clip = lowres_clip(clip, factor)
        if flip:
            clip = flip_clip(clip)
        if jitter:
            for strength, factor_j, op in zip((self.brightness, self.contrast, self.saturation), jitter_factors,
                                              (adjust_brightness_clip, adjust_contrast_clip, adjust_saturation_clip)):
                if strength > 0:
                    clip = op(clip, factor_j)
        if hue and self.hue > 0:
            clip = hue_shift_clip(clip, hue_shift)
        tensor = to_normalized_tensor(clip, self.mean, self.std)
        if erase and box is not None:
            tensor = erase_clip(tensor, box, self.erase_fill)
        return tensor
