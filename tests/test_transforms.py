"""Clip-consistent frame transforms (datasets/transforms.py): resizing matches PIL bicubic (antialiased when
shrinking), as the authors' loaders and CLIP resize; random transforms treat every frame of a clip alike, flip,
erase (filled with the authors' values) and hue shift do what they say; the test transform is deterministic."""
import numpy as np
import pytest
import torch
from PIL import Image

from configs import get_defaults, load_config
from datasets import transforms as T
from datasets.transforms import ClipTransform

# ----------------------------------------------------------------------------- resizing
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


# ----------------------------------------------------------------------------- random and test transforms
def _clip_of_identical_frames(t=4, h=24, w=12, seed=0):
    frame = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return [frame.copy() for _ in range(t)], frame


def _always(**changes):
    base = dict(size=(32, 16), train=True, flip_prob=0.0, erase_prob=0.0, hue_prob=0.0, jitter_prob=0.0, lowres_prob=0.0)
    base.update(changes)
    return T.ClipTransform(**base)


@pytest.mark.parametrize("changes", [
    dict(flip_prob=1.0),
    dict(erase_prob=1.0),
    dict(hue_prob=1.0, hue=0.3),
    dict(jitter_prob=1.0, brightness=0.4, contrast=0.4, saturation=0.4),
    dict(lowres_prob=1.0, lowres_scale=(0.2, 0.4)),
    dict(flip_prob=1.0, erase_prob=1.0, hue_prob=1.0, jitter_prob=1.0, brightness=0.3, contrast=0.3, saturation=0.3,
         lowres_prob=1.0),
])
def test_identical_frames_stay_identical_after_random_transforms(changes):
    frames, _ = _clip_of_identical_frames()
    transform = _always(**changes)
    plain = _always()(frames, np.random.default_rng(0))
    for seed in range(5):
        out = transform(frames, np.random.default_rng(seed))
        assert out.shape == (4, 3, 32, 16) and out.dtype == torch.float32
        assert all(torch.equal(out[0], out[i]) for i in range(1, 4))
        assert not torch.equal(out, plain), "the transform should have changed the clip"


def test_flip_and_erase_do_what_they_say():
    frames, _ = _clip_of_identical_frames(t=2)
    plain = _always()(frames, np.random.default_rng(0))
    flipped = _always(flip_prob=1.0)(frames, np.random.default_rng(0))
    assert torch.equal(flipped, plain.flip(-1))
    erased = _always(erase_prob=1.0)(frames, np.random.default_rng(3))
    zero = (erased == 0).all(dim=1)[0]          # erased pixels = the mean colour = 0 after normalisation
    rows, cols = torch.nonzero(zero, as_tuple=True)
    assert rows.numel() > 0
    box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all(), "the erased area is one rectangle"


def test_erase_probability_means_what_it_says():
    frames, _ = _clip_of_identical_frames(t=1, h=32, w=16)
    plain = _always()(frames, np.random.default_rng(0))
    for prob, lo, hi in ((0.0, 0, 0), (1.0, 200, 200), (0.25, 25, 80)):
        transform = _always(erase_prob=prob)
        hits = sum(not torch.equal(transform(frames, np.random.default_rng(s)), plain) for s in range(200))
        assert lo <= hits <= hi, (prob, hits)


def test_hue_shift_is_circular_and_keeps_grey():
    grey = np.full((1, 4, 4, 3), 128, np.uint8)
    assert np.array_equal(T.hue_shift_clip(grey, 0.3), grey)
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    shifted = T.hue_shift_clip(red, 1 / 3)             # red -> green
    assert shifted[0, 0, 0].argmax() == 1
    assert np.array_equal(T.hue_shift_clip(red, 1.0), red)


def test_test_transform_is_deterministic_resize_and_normalise():
    frames, frame = _clip_of_identical_frames(t=2, h=32, w=16)
    transform = T.ClipTransform(size=(32, 16), train=False)
    out = transform(frames)
    expected = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert T.resize_frames([np.zeros((10, 7, 3), np.uint8)], (20, 9)).shape == (1, 20, 9, 3)


def test_transform_from_cfg_validates_keys():
    cfg = load_config(None, ["INPUT.ERASE_PROB", "1.5"])
    with pytest.raises(ValueError, match="INPUT.ERASE_PROB"):
        T.ClipTransform.from_cfg(cfg, train=True)
    cfg = load_config(None, ["INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[48, 24]"])
    assert T.ClipTransform.from_cfg(cfg, train=True).size == (64, 32)
    assert T.ClipTransform.from_cfg(cfg, train=False).size == (48, 24) and not T.ClipTransform.from_cfg(cfg, False).train


def test_random_erasing_fills_with_the_authors_values():
    cfg = get_defaults()
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.ERASE_PROB", "1.0", "INPUT.FLIP_PROB", "0.0",
                         "INPUT.HUE_PROB", "0.0"])
    transform = ClipTransform.from_cfg(cfg, train=True)
    frames = [np.full((32, 16, 3), 128, np.uint8)] * 2
    clip = transform(frames, np.random.default_rng(0))
    fill = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1)
    erased = (clip[0] - fill[:, :, None]).abs().sum(0) < 1e-6    # pixels equal to the fill in all channels
    assert erased.any() and torch.equal(erased, (clip[1] - fill[:, :, None]).abs().sum(0) < 1e-6)
