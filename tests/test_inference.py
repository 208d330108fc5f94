"""The public inference API (processor/inference.py): FeatureExtractor, the inference path of
evaluate_all_cases.py usable on any tracklets (same embeddings, settings from the checkpoint, clear errors, a
NaN model named); load_clips, a tracklet's frames -> the model input evaluation makes of them, fed to
FeatureExtractor.embed_clips and to the exported ONNX graph (the export walk-through of docs/inference.md)."""
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate_all_cases
from datasets.build import build_dataset, build_inference_loader
from datasets.frame_sampling import SAMPLING_MODES, inference_clips
from datasets.transforms import resize_frames
from datasets.video import CorruptFrameError
from processor.encoding import camera_views, forward_clips, unique_tracklets
from processor.inference import GROUND_CAMERA, FeatureExtractor, InferenceInputError, load_clips
from tests.helpers.checkpoints import make_nan_checkpoint
from tests.helpers.data import make_tiny_cfg
from tools import export
from utils.checkpoint import CheckpointError, save_checkpoint
from utils.metrics import NonFiniteFeaturesError


@pytest.fixture(scope="module")
def extractor(tiny_checkpoint):
    return FeatureExtractor.from_checkpoint(tiny_checkpoint[1], device="cpu")


# ----------------------------------------------------------------------------- FeatureExtractor
def l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow
def test_embeddings_equal_evaluate_save_features(tiny_checkpoint, extractor, tmp_path):
    root, ckpt = tiny_checkpoint
    npz = str(tmp_path / "f.npz")
    evaluate_all_cases.main(["--model_path", ckpt, "--cases", "1,3", "--save_features", npz,
                             "OUTPUT_DIR", str(tmp_path / "eval")])
    saved = np.load(npz)
    cfg = extractor.cfg
    tracklets, _ = unique_tracklets({c: build_dataset(cfg).cases[c] for c in (1, 3)})
    assert [t.name for t in tracklets] == saved["names"].tolist()
    expected = l2(saved["features"])
    camids = saved["camids"]
    assert set(camids.tolist()) > {GROUND_CAMERA}  # aerial and ground tracklets both occur

    from_folders = extractor.embed_folders([t.folder for t in tracklets], camids=camids)
    assert from_folders.dtype == np.float32 and from_folders.shape == expected.shape
    np.testing.assert_allclose(from_folders, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(from_folders, axis=1), 1.0, atol=1e-5)
    from_lists = extractor([list(t.frames) for t in tracklets], camids=camids.tolist())
    np.testing.assert_allclose(from_lists, expected, atol=1e-5)

    # The tensor path: clips made by the test loader (even sampling: one clip per tracklet).
    batch = next(iter(build_inference_loader(cfg, tracklets[:5])))
    from_tensor = extractor(batch["frames"], camids=batch["camids"])
    assert isinstance(from_tensor, torch.Tensor) and from_tensor.dtype == torch.float32
    np.testing.assert_allclose(from_tensor.numpy(), expected[:5], atol=1e-5)


def test_default_camera_is_ground_and_camera_ids_matter(tiny_checkpoint, extractor):
    root, _ = tiny_checkpoint
    folders = [t.folder for t in build_dataset(extractor.cfg).cases[1].gallery[:3]]
    default = extractor.embed_folders(folders)
    np.testing.assert_array_equal(default, extractor.embed_folders(folders, camids=GROUND_CAMERA))
    aerial = extractor.embed_folders(folders, camids=[1, 1, 1])
    assert not np.allclose(default, aerial)  # the SIE camera embedding is applied


def test_settings_come_from_the_checkpoint(tiny_checkpoint):
    # demo.yml says 128x64 frames and 8-frame clips; the checkpoint stores 32x16 and 4.
    ex = FeatureExtractor.from_checkpoint(tiny_checkpoint[1], device="cpu", amp="off", sampling="dense")
    assert list(ex.cfg.INPUT.SIZE_TEST) == [32, 16] and ex.cfg.TEST.SEQ_LEN == 4
    assert ex.cfg.TEST.SAMPLING == "dense" and ex.cfg.SOLVER.AMP == "off" and ex.device.type == "cpu"
    with pytest.raises(InferenceInputError, match=r"\(B, T, 3, 32, 16\)"):
        ex.embed_clips(torch.zeros(1, 4, 3, 64, 32))
    with pytest.raises(InferenceInputError, match="sampling must be"):
        FeatureExtractor.from_checkpoint(tiny_checkpoint[1], device="cpu", sampling="random")


def test_bad_inputs_get_clear_errors(tiny_checkpoint, extractor, tmp_path):
    root, ckpt = tiny_checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InferenceInputError, match="holds no frames"):
        extractor.embed_folders([str(empty)])
    with pytest.raises(InferenceInputError, match="not found"):
        extractor.embed_folders([str(tmp_path / "missing")])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0001.jpg").write_text("not an image")
    with pytest.raises(CorruptFrameError, match="0001.jpg"):
        extractor.embed_folders([str(bad)])
    with pytest.raises(InferenceInputError, match="frame list 0 is empty"):
        extractor.embed_frame_lists([[]])
    good = build_dataset(extractor.cfg).cases[1].gallery[0].folder
    with pytest.raises(InferenceInputError, match=r"camera ids \[7\] are outside"):
        extractor.embed_folders([good], camids=7)
    with pytest.raises(InferenceInputError, match="2 camera ids for 1 inputs"):
        extractor.embed_folders([good], camids=[0, 1])

    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="Cannot read checkpoint"):
        FeatureExtractor.from_checkpoint(str(text))
    weights_only = str(tmp_path / "weights.pth")
    save_checkpoint({"model": {}}, weights_only)
    with pytest.raises(CheckpointError, match="not a checkpoint written by train.py"):
        FeatureExtractor.from_checkpoint(weights_only)
    copy = str(tmp_path / "copy")
    shutil.copytree(os.path.dirname(good), copy)
    assert extractor.embed_folders([os.path.join(copy, os.path.basename(good))]).shape == (1, extractor.embedding_dim)


def test_nan_model_raises_naming_the_checkpoint(tiny_checkpoint, extractor, tmp_path):
    _, ckpt = tiny_checkpoint
    assert extractor.checkpoint_path == ckpt
    path = make_nan_checkpoint(ckpt, str(tmp_path / "diverged.pth"))
    nan = FeatureExtractor.from_checkpoint(path, device="cpu")
    assert nan.checkpoint_path == path
    folders = [t.folder for t in build_dataset(nan.cfg).cases[1].gallery[:2]]
    name = os.path.basename(folders[0])
    with pytest.raises(NonFiniteFeaturesError, match=rf"diverged\.pth produces non-finite features .*2 of 2 .*'{name}'"):
        nan.embed_folders(folders)
    with pytest.raises(NonFiniteFeaturesError, match=r"diverged\.pth produces non-finite features"):
        nan.embed_clips(torch.zeros(2, 4, 3, 32, 16))
    # A model built without a checkpoint is named generically.
    bare = FeatureExtractor(nan.model, nan.cfg, nan.device, nan.num_cameras)
    with pytest.raises(NonFiniteFeaturesError, match="^The model produces non-finite features"):
        bare.embed_folders(folders[:1])


# ----------------------------------------------------------------------------- load_clips
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


@pytest.mark.slow
@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_frame_choice_padding_resize_and_normalisation(tmp_path, tiny_root, mode):
    """Frames chosen by inference_clips (short tracklets padded with their last frame), in natural order,
    resized (shrunk and enlarged) and normalised: against frames prepared here."""
    cfg = make_tiny_cfg(tiny_root, "TEST.SAMPLING", mode, "INPUT.SIZE_TEST", "[24, 12]")
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
    cfg = make_tiny_cfg(tiny_root, "TEST.SAMPLING", mode)
    tracklets = [t for split in build_dataset(cfg).cases.values() for t in split.query + split.gallery]
    assert min(t.num_frames for t in tracklets) < 4 < max(t.num_frames for t in tracklets)
    loaded = {i: [] for i in range(len(tracklets))}
    for batch in build_inference_loader(cfg, tracklets):
        for index, clip in zip(batch["indices"].tolist(), batch["frames"]):
            loaded[index].append(clip)
    for i, tracklet in enumerate(tracklets):
        assert torch.equal(load_clips(tracklet.folder, cfg), torch.stack(loaded[i])), tracklet.folder


@pytest.mark.slow
@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_embed_clips_of_load_clips_is_the_api_embedding(tiny_checkpoint, mode):
    root, ckpt = tiny_checkpoint
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


@pytest.mark.slow
def test_onnx_on_load_clips_equals_the_api(tiny_checkpoint, tmp_path, capsys):
    """docs/inference.md's export walk-through: export, load_clips, onnxruntime; the command logs like train.py."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime (pip install onnx onnxruntime)")
    root, ckpt = tiny_checkpoint
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
    cfg = make_tiny_cfg(tiny_root)
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


def test_list_frames_is_in_natural_order_without_hidden_files(tmp_path):
    from processor.inference import list_frames

    for name in ("frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "._frame_3.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in list_frames(str(tmp_path))] == ["frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]


def test_a_camera_id_equal_to_the_camera_count_is_refused(extractor):
    good = build_dataset(extractor.cfg).cases[1].gallery[0]
    count = extractor.num_cameras
    with pytest.raises(InferenceInputError, match=rf"camera ids \[{count}\] are outside"):
        extractor.embed_frame_lists([list(good.frames)], camids=count)
