"""Shared test setup: nothing may wait on a model hub; tests run from the repository root."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402


@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts clips through the one encoder call of the tracklet paths (processor.encoding.forward_clips,
    called by encode_tracklets: evaluation, FeatureExtractor, search)."""
    from processor import encoding

    calls = {"clips": 0}
    original = encoding.forward_clips

    def counting(model, frames, *args, **kwargs):
        calls["clips"] += frames.shape[0]
        return original(model, frames, *args, **kwargs)

    monkeypatch.setattr(encoding, "forward_clips", counting)
    return calls
