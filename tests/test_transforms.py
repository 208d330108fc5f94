"""Frame resizing matches PIL bicubic (antialiased when shrinking), as the authors' loaders and CLIP resize."""
import numpy as np
import pytest
from PIL import Image

from datasets import transforms as T

# Mean absolute difference to PIL in grey levels. Shrinking: cv2.INTER_CUBIC (no antialiasing) gives
# ~39 on the 4x case below and cv2.INTER_AREA ~7; a PIL-equivalent resize stays well under one level.
MAX_MEAN_DIFF = 1.0
# Enlarging (nothing to antialias): cv2.INTER_CUBIC's slightly sharper kernel gives ~4 on pure noise
# (cv2.INTER_AREA, i.e. bilinear when enlarging, ~11).
MAX_MEAN_DIFF_ENLARGE = 5.0


def _detailed_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """High-frequency content (noise over fine stripes): where aliasing shows most."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = (np.sin(xx * 1.3) + np.sin(yy * 0.9))[..., None] * 50
    noise = rng.normal(0, 40, size=(height, width, 3))
    return np.clip(128 + stripes + noise, 0, 255).astype(np.uint8)


def _pil_bicubic(frame: np.ndarray, size) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BICUBIC))


@pytest.mark.parametrize("source_shape", [(1024, 512), (400, 200), (300, 100), (100, 300)],
                         ids=["shrink4x", "shrink1.6x", "mixed_tall", "mixed_wide"])
def test_shrinking_matches_pil_bicubic(source_shape):
    frame = _detailed_frame(*source_shape)
    ours = T.resize_frames([frame], (256, 128))[0].astype(np.float64)
    reference = _pil_bicubic(frame, (256, 128)).astype(np.float64)
    assert np.abs(ours - reference).mean() <= MAX_MEAN_DIFF


@pytest.mark.parametrize("source_shape", [(150, 60), (80, 34), (256, 100)])
def test_enlarging_is_bicubic_close_to_pil(source_shape):
    frame = _detailed_frame(*source_shape)
    ours = T.resize_frames([frame], (256, 128))[0].astype(np.float64)
    reference = _pil_bicubic(frame, (256, 128)).astype(np.float64)
    assert np.abs(ours - reference).mean() <= MAX_MEAN_DIFF_ENLARGE


def test_resize_of_frames_of_several_sizes_keeps_order_and_copies_exact_sizes():
    frames = [_detailed_frame(1024, 512, 1), _detailed_frame(256, 128, 2), _detailed_frame(300, 40, 3)]
    clip = T.resize_frames(frames, (256, 128))
    assert clip.shape == (3, 256, 128, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[1], frames[1])  # already the right size: untouched
    for got, frame in zip(clip[[0, 2]], frames[::2]):
        assert np.abs(got.astype(float) - _pil_bicubic(frame, (256, 128))).mean() <= MAX_MEAN_DIFF


def test_eval_clip_transform_equals_pil_resize_then_normalise():
    frame = _detailed_frame(512, 256, 4)
    tensor = T.ClipTransform(size=(128, 64))([frame])
    expected = (_pil_bicubic(frame, (128, 64)) / 255.0 - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD)
    diff = np.abs(tensor[0].permute(1, 2, 0).numpy() - expected)
    assert diff.mean() * 255 * max(T.IMAGENET_STD) <= MAX_MEAN_DIFF
