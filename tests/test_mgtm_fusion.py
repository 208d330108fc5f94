"""MGTM fuses its granularities with softmax weights of its fusion logits (issue 13: no test set
unequal logits, so a fusion with weights that are not a softmax went unnoticed).

Written against the public behaviour: ``fusion_logits`` (one learned logit per granularity) and the
one LayerNorm child that normalises the fused per-frame features (its input is captured by a hook)."""
import torch
from torch import nn

from tests.test_mgtm import make_mgtm, random_tokens


def fused_input(mgtm, tokens, logits):
    """The fused per-frame features (B,T,D) that reach MGTM's final LayerNorm, with ``logits`` set."""
    norms = [m for m in mgtm.children() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 1, "MGTM should have one final LayerNorm as a direct child"
    captured = []
    handle = norms[0].register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            mgtm.fusion_logits.copy_(torch.as_tensor(logits, dtype=torch.float32))
            f_frame, f_tp = mgtm(tokens)
    finally:
        handle.remove()
    per_frame = next(c for c in captured if c.dim() == 3)
    return per_frame, f_frame, f_tp, norms[0]


def test_fusion_weights_are_the_softmax_of_unequal_logits():
    mgtm = make_mgtm(frame_source="fused").eval()
    tokens = random_tokens(2, 8, seed=3)
    count = mgtm.fusion_logits.numel()
    # One granularity alone (softmax of [0, -inf, ...] is exactly one-hot): each level's own features.
    levels = []
    for g in range(count):
        one_hot = torch.full((count,), float("-inf"))
        one_hot[g] = 0.0
        levels.append(fused_input(mgtm, tokens, one_hot)[0])
    for g in range(1, count):  # the granularities really differ, else any weighting would pass
        assert not torch.allclose(levels[0], levels[g], atol=1e-3)
    logits = torch.tensor([0.7, -1.3, 2.1])
    weights = torch.softmax(logits, 0)
    expected = sum(w * level for w, level in zip(weights, levels))  # softmax fusion by hand
    got, f_frame, f_tp, norm = fused_input(mgtm, tokens, logits)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(f_frame, norm(expected), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(f_tp, norm(expected.mean(dim=1)), rtol=1e-4, atol=1e-4)


def test_whole_clip_frames_and_fusion_of_clip_vectors_as_the_authors():
    """FRAME_SOURCE "whole": f_frame = frame LayerNorm of the whole-clip level's frames (norm4);
    f_tp = fusion LayerNorm (norm3) of the softmax-weighted clip vectors, where the whole-clip level
    enters as the mean of its normalised frames and the other levels as their plain frame means."""
    mgtm = make_mgtm(frame_source="whole").eval()
    tokens = random_tokens(2, 8, seed=4)
    logits = torch.tensor([0.7, -1.3, 2.1])
    with torch.no_grad():
        mgtm.fusion_logits.copy_(logits)
        f_frame, f_tp = mgtm(tokens)
        reduced = mgtm.reduce_tokens(tokens, mgtm.grid_size) + mgtm.token_embedding
        levels = mgtm.run_levels(reduced)                     # (G, B, T, D)
        whole = mgtm.granularities.index(1)
        expected_frame = mgtm.frame_norm(levels[whole])
        clips = [expected_frame.mean(dim=1) if g == whole else levels[g].mean(dim=1) for g in range(3)]
        weights = torch.softmax(logits, 0)
        expected_tp = mgtm.norm(sum(w * c for w, c in zip(weights, clips)))
    assert mgtm.frame_norm is not mgtm.norm
    torch.testing.assert_close(f_frame, expected_frame, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f_tp, expected_tp, rtol=1e-5, atol=1e-5)


def test_whole_frame_source_needs_the_whole_clip_level():
    import pytest

    with pytest.raises(ValueError, match="GRANULARITIES"):
        make_mgtm(granularities=(2, 4), frame_source="whole")
