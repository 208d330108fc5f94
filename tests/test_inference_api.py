"""FeatureExtractor: the inference path of evaluate_all_cases.py, usable on any tracklets."""
import os
import re
import shutil

import numpy as np
import pytest
import torch

import evaluate_all_cases
from datasets.build import build_dataset, build_inference_loader
from datasets.video import CorruptFrameError
from processor.inference import GROUND_CAMERA, FeatureExtractor, InferenceInputError, unique_tracklets
from tests.inference_fixtures import make_nan_checkpoint, make_tiny_checkpoint
from utils.checkpoint import CheckpointError, save_checkpoint
from utils.metrics import NonFiniteFeaturesError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def extractor(tiny):
    return FeatureExtractor.from_checkpoint(tiny[1], device="cpu")


def l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_embeddings_equal_evaluate_save_features(tiny, extractor, tmp_path):
    root, ckpt = tiny
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


def test_default_camera_is_ground_and_camera_ids_matter(tiny, extractor):
    root, _ = tiny
    folders = [t.folder for t in build_dataset(extractor.cfg).cases[1].gallery[:3]]
    default = extractor.embed_folders(folders)
    np.testing.assert_array_equal(default, extractor.embed_folders(folders, camids=GROUND_CAMERA))
    aerial = extractor.embed_folders(folders, camids=[1, 1, 1])
    assert not np.allclose(default, aerial)  # the SIE camera embedding is applied


def test_settings_come_from_the_checkpoint(tiny):
    # demo.yml says 128x64 frames and 8-frame clips; the checkpoint stores 32x16 and 4.
    ex = FeatureExtractor.from_checkpoint(tiny[1], device="cpu", amp="off", sampling="dense")
    assert list(ex.cfg.INPUT.SIZE_TEST) == [32, 16] and ex.cfg.TEST.SEQ_LEN == 4
    assert ex.cfg.TEST.SAMPLING == "dense" and ex.cfg.SOLVER.AMP == "off" and ex.device.type == "cpu"
    with pytest.raises(InferenceInputError, match=r"\(B, T, 3, 32, 16\)"):
        ex.embed_clips(torch.zeros(1, 4, 3, 64, 32))
    with pytest.raises(InferenceInputError, match="sampling must be"):
        FeatureExtractor.from_checkpoint(tiny[1], device="cpu", sampling="random")


def test_bad_inputs_get_clear_errors(tiny, extractor, tmp_path):
    root, ckpt = tiny
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


def test_nan_model_raises_naming_the_checkpoint(tiny, extractor, tmp_path):
    _, ckpt = tiny
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


def test_forward_clips_returns_copies_the_next_forward_cannot_overwrite():
    """CUDA-graph outputs (MODEL.COMPILE_MODE reduce-overhead) live in memory the next replay reuses:
    forward_clips hands out copies, already-float32 outputs included."""
    import torch

    from processor.inference import forward_clips

    class FixedOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.randn(2, 5)

        def forward(self, frames, camids, views):
            return {"embedding": self.out}

    model = FixedOutput()
    got = forward_clips(model, torch.zeros(2, 1, 3, 4, 4), torch.zeros(2, dtype=torch.long),
                        torch.zeros(2, dtype=torch.long), torch.device("cpu"), None, ("embedding",))["embedding"]
    assert torch.equal(got, model.out) and got.data_ptr() != model.out.data_ptr()


def test_list_frames_is_in_natural_order_without_hidden_files(tmp_path):
    from processor.inference import list_frames

    for name in ("frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "._frame_3.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in list_frames(str(tmp_path))] == ["frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]


def test_camera_views_are_ground_for_camera_0_only():
    from processor.inference import camera_views

    assert camera_views(torch.tensor([0, 1, 2, 0])).tolist() == [0, 1, 1, 0]


def test_a_camera_id_equal_to_the_camera_count_is_refused(tiny, extractor):
    good = build_dataset(extractor.cfg).cases[1].gallery[0]
    count = extractor.num_cameras
    with pytest.raises(InferenceInputError, match=rf"camera ids \[{count}\] are outside"):
        extractor.embed_frame_lists([list(good.frames)], camids=count)


def test_map3_pools_the_scored_queries_of_all_cases():
    """mAP-3 weights each case by its queries that have a true match (num_valid), not by all its queries."""
    from processor.inference import CaseResult, summarize

    def result(case, m_ap, valid, queries=4):
        metrics = {"mAP": m_ap, "mINP": m_ap, "R1": m_ap, "R5": 1.0, "R10": 1.0, "R20": 1.0, "num_valid": valid}
        return CaseResult(case, [f"{i}_1" for i in range(queries)], ["9_9"], np.zeros((queries, 1), int), metrics)

    summary = summarize({1: result(1, 0.5, 1), 2: result(2, 1.0, 3)}, "tracklet", "trapezoid")
    assert summary["mAP-3"] == pytest.approx((50.0 * 1 + 100.0 * 3) / 4)
    assert summary["mean_mAP"] == pytest.approx(75.0)
