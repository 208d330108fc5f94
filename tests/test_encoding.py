"""The one clip-encoding path (processor/encoding.py): encode_tracklets (evaluation, validation, FeatureExtractor,
search) shows its progress bar like training's, on a terminal or with SAS_PROGRESS=1, never piling up in
redirected logs; forward_clips returns copies that the next forward cannot overwrite."""
import pytest
import torch

from datasets.build import build_dataset
from processor.encoding import camera_views, encode_tracklets, forward_clips
from tests.helpers.data import make_tiny_cfg
from utils.logger import PROGRESS_ENV


class MeanColour(torch.nn.Module):
    """A stand-in model: the mean colour of each clip as its embedding."""

    def forward(self, frames, camids, views):
        return {"embedding": frames.mean(dim=(1, 3, 4))}


@pytest.fixture(scope="module")
def cfg_and_tracklets(tiny_root):
    """(the tiny data config, the first 4 query tracklets of case 1)."""
    cfg = make_tiny_cfg(tiny_root)
    return cfg, build_dataset(cfg).cases[1].query[:4]


@pytest.mark.parametrize("setting, shown", [("", False), ("1", True), ("0", False)])
def test_encode_progress_bar_follows_sas_progress(cfg_and_tracklets, capsys, monkeypatch, setting, shown):
    monkeypatch.setenv(PROGRESS_ENV, setting)
    cfg, tracklets = cfg_and_tracklets
    features = encode_tracklets(MeanColour(), cfg, tracklets, torch.device("cpu"), desc="encode-check")["embedding"]
    assert features.shape == (len(tracklets), 3) and torch.isfinite(features).all()
    err = capsys.readouterr().err  # captured: not a terminal
    assert ("encode-check" in err) == shown, err


def test_forward_clips_returns_copies_the_next_forward_cannot_overwrite():
    """CUDA-graph outputs (MODEL.COMPILE_MODE reduce-overhead) live in memory the next replay reuses:
    forward_clips hands out copies, already-float32 outputs included."""


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


def test_camera_views_are_ground_for_camera_0_only():
    assert camera_views(torch.tensor([0, 1, 2, 0])).tolist() == [0, 1, 1, 0]
