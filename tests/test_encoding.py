"""processor.encoding.encode_tracklets (evaluation, validation, FeatureExtractor, search) shows its progress
bar like training's: on a terminal or with SAS_PROGRESS=1, never piling up in redirected logs."""
import pytest
import torch

from datasets.build import build_dataset
from processor.encoding import encode_tracklets
from tests.datasets_fixtures import make_tiny_root, tiny_cfg
from utils.logger import PROGRESS_ENV


class MeanColour(torch.nn.Module):
    """A stand-in model: the mean colour of each clip as its embedding."""

    def forward(self, frames, camids, views):
        return {"embedding": frames.mean(dim=(1, 3, 4))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_cfg(make_tiny_root(tmp_path_factory.mktemp("progress")))
    return cfg, build_dataset(cfg).cases[1].query[:4]


@pytest.mark.parametrize("setting, shown", [("", False), ("1", True), ("0", False)])
def test_encode_progress_bar_follows_sas_progress(tiny, capsys, monkeypatch, setting, shown):
    monkeypatch.setenv(PROGRESS_ENV, setting)
    cfg, tracklets = tiny
    features = encode_tracklets(MeanColour(), cfg, tracklets, torch.device("cpu"), desc="encode-check")["embedding"]
    assert features.shape == (len(tracklets), 3) and torch.isfinite(features).all()
    err = capsys.readouterr().err  # captured: not a terminal
    assert ("encode-check" in err) == shown, err
