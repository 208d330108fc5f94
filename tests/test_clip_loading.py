"""processor.inference.load_clips: a tracklet's frames -> the model input evaluation makes of them, fed to
FeatureExtractor.embed_clips and to the exported ONNX graph (the export walk-through of docs/inference.md)."""
import os
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets.build import build_dataset, build_inference_loader
from datasets.frame_sampling import SAMPLING_MODES, inference_clips
from datasets.transforms import resize_frames
from processor.encoding import camera_views, forward_clips
from processor.inference import FeatureExtractor, InferenceInputError, load_clips
from tests.datasets_fixtures import make_tiny_root, tiny_cfg
from tests.inference_fixtures import make_tiny_checkpoint
from tools import export


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("clips_model"))


def write_frames(folder, sizes, seed=0):
    """PNG frames (lossless) of random content and the given (H, W) sizes, named so that natural order != text order."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = os.path.join(folder, f"f{i + 1}.png")  # f1 .. f10: natural sort, not f1, f10, f2
        cv2.imwrite(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def expected_frame(path, cfg) -> torch.Tensor:
    """One frame as the model sees it, computed here: RGB, resized to INPUT.SIZE_TEST, (x/255 - mean) / std."""
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    resized = torch.from_numpy(resize_frames([rgb], cfg.INPUT.SIZE_TEST)[0]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(cfg.INPUT.PIXEL_MEAN), torch.tensor(cfg.INPUT.PIXEL_STD)
    return (resized - mean[:, None, None]) / std[:, None, None]


@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_frame_choice_padding_resize_and_normalisation(tmp_path, tiny_root, mode):
    """Frames chosen by inference_clips (short tracklets padded with their last frame), in natural order,
    resized (shrunk and enlarged) and normalised: against frames prepared here."""
    cfg = tiny_cfg(tiny_root, "TEST.SAMPLING", mode, "INPUT.SIZE_TEST", "[24, 12]")
    for count in (3, 10):  # shorter and longer than TEST.SEQ_LEN = 4
        sizes = [(40, 20) if i % 2 else (10, 6) for i in range(count)]
        paths = write_frames(str(tmp_path / f"{mode}{count}"), sizes, seed=count)
        clips = load_clips(str(tmp_path / f"{mode}{count}"), cfg)
        chosen = inference_clips(count, 4, mode)
        assert clips.shape == (len(chosen), 4, 3, 24, 12) and clips.dtype == torch.float32
        expected = torch.stack([torch.stack([expected_frame(paths[i], cfg) for i in clip]) for clip in chosen])
        torch.testing.assert_close(clips, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(load_clips(paths, cfg), clips, atol=0, rtol=0)  # a frame list, same clips
    short = load_clips(paths[:3], cfg)
    assert torch.equal(short[0, 3], short[0, 2])  # padded with the last frame


@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_the_clips_of_evaluation(tiny_root, mode):
    """Every test tracklet: load_clips gives exactly what the evaluation loader gives the model."""
    cfg = tiny_cfg(tiny_root, "TEST.SAMPLING", mode)
    tracklets = [t for split in build_dataset(cfg).cases.values() for t in split.query + split.gallery]
    assert min(t.num_frames for t in tracklets) < 4 < max(t.num_frames for t in tracklets)
    loaded = {i: [] for i in range(len(tracklets))}
    for batch in build_inference_loader(cfg, tracklets):
        for index, clip in zip(batch["indices"].tolist(), batch["frames"]):
            loaded[index].append(clip)
    for i, tracklet in enumerate(tracklets):
        assert torch.equal(load_clips(tracklet.folder, cfg), torch.stack(loaded[i])), tracklet.folder


@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_embed_clips_of_load_clips_is_the_api_embedding(tiny, mode):
    root, ckpt = tiny
    extractor = FeatureExtractor.from_checkpoint(ckpt, device="cpu", sampling=mode)
    split = build_dataset(extractor.cfg).cases[3]
    for tracklet in split.query[:2] + split.gallery[:2]:
        clips = extractor.load_clips(tracklet.folder)
        expected = extractor.embed_folders([tracklet.folder], camids=tracklet.camid)[0]
        if len(clips) == 1:
            got = extractor.embed_clips(clips, camids=tracklet.camid)[0]
        else:  # several chunks (dense): the normalised mean of their features, as evaluation averages them
            camids = torch.full((len(clips),), tracklet.camid)
            with torch.no_grad():
                features = forward_clips(extractor.model, clips, camids, camera_views(camids), extractor.device, None,
                                         ("embedding",))["embedding"]
            got = F.normalize(features.mean(0), dim=0)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_onnx_on_load_clips_equals_the_api(tiny, tmp_path, capsys):
    """docs/inference.md's export walk-through: export, load_clips, onnxruntime; the command logs like train.py."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime (pip install onnx onnxruntime)")
    root, ckpt = tiny
    out = str(tmp_path / "model.onnx")
    export.main(["--model_path", ckpt, "--format", "onnx", "--out", out])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(re.match(r"\d\d:\d\d:\d\d [\w.]+ (INFO|WARNING): ", line) for line in lines), lines
    assert any(re.match(r"\d\d:\d\d:\d\d export INFO: onnx parity vs PyTorch .* max \|diff\| = ", line) for line in lines)

    extractor = FeatureExtractor.from_checkpoint(ckpt, device="cpu")
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    split = build_dataset(extractor.cfg).cases[1]
    tracklets = sorted(split.query + split.gallery, key=lambda t: t.num_frames)
    for tracklet in (tracklets[0], tracklets[-1]):  # the shortest (padded) and the longest
        clips = extractor.load_clips(tracklet.folder)
        assert len(clips) == 1
        onnx_embedding = session.run(["embedding"], {"frames": clips.numpy(),
                                                     "camids": np.array([tracklet.camid], dtype=np.int64)})[0]
        api = extractor.embed_folders([tracklet.folder], camids=tracklet.camid)
        assert np.abs(onnx_embedding - api).max() <= 1e-5


def test_bad_input_is_one_clear_error(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root)
    with pytest.raises(InferenceInputError, match="empty frame list"):
        load_clips([], cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferenceInputError, match="holds no frames"):
        load_clips(str(tmp_path / "empty"), cfg)
    with pytest.raises(InferenceInputError, match="not found"):
        load_clips(str(tmp_path / "missing"), cfg)


def test_list_frames_skips_hidden_files(tmp_path):
    """A macOS resource fork (._frame.jpg) is not a frame (the scan and search skip it too)."""
    from processor.inference import list_frames

    for name in ("00002.jpg", "00001.jpg", "._00001.jpg", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert [p.rsplit("/", 1)[1] for p in list_frames(str(tmp_path))] == ["00001.jpg", "00002.jpg"]
