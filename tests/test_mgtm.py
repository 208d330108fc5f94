"""MGTM (model/mgtm.py): shapes for any clip length, masked windows equal separate windows, batch independence,
the authors' defaults; the granularities are fused with softmax weights of the fusion logits (issue 13: no test
set unequal logits, so a fusion with weights that are not a softmax went unnoticed), written against the public
behaviour: ``fusion_logits`` and the one LayerNorm child that normalises the fused per-frame features (its input
captured by a hook)."""
import pytest
import torch
from torch import nn

from model.mgtm import MGTM, frame_windows, pooled_grid, sinusoidal_encoding, window_layout

GRID = (4, 2)
DIM = 32


def make_mgtm(**kwargs):
    torch.manual_seed(0)
    options = dict(dim=DIM, grid_size=GRID, granularities=(1, 2, 4), spatial_tokens=4, depth=1, heads=4,
                   mlp_ratio=2.0, dropout=0.0, max_frames=8)
    options.update(kwargs)
    return MGTM(**options).eval()


def random_tokens(batch, frames, seed=0):
    return torch.randn(batch, frames, 1 + GRID[0] * GRID[1], DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames", [4, 8, 16])
@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned"])
def test_runs_for_common_clip_lengths(frames, pos_encoding):
    mgtm = make_mgtm(pos_encoding=pos_encoding)
    f_frame, f_tp = mgtm(random_tokens(3, frames))
    assert f_frame.shape == (3, frames, DIM) and f_tp.shape == (3, DIM)
    assert torch.isfinite(f_frame).all() and torch.isfinite(f_tp).all()


@pytest.mark.parametrize("frames,windows", [(16, 4), (8, 2), (6, 4), (7, 2), (3, 4), (1, 4), (5, 1)])
def test_window_layout_is_a_contiguous_partition(frames, windows):
    layout = window_layout(frames, windows)
    assert len(layout) == min(frames, windows)
    assert [f for w in layout for f in w] == list(range(frames))
    lengths = [len(w) for w in layout]
    assert max(lengths) - min(lengths) <= 1


def window_encoding(mgtm, count, window_len, longest):
    """(window_len, D) temporal encoding of one window of a level with ``count`` windows, from the rules."""
    if mgtm.pos_encoding == "relative":  # fraction of the window times the training window length (8 frames)
        positions = (torch.arange(window_len, dtype=torch.float32) + 0.5) / window_len * (8 / min(count, 8))
        return sinusoidal_encoding(positions, DIM)
    if mgtm.pos_encoding == "none":
        return torch.zeros(window_len, DIM)
    return mgtm.temporal_table(longest, "cpu", torch.float32)[:window_len]


@pytest.mark.parametrize("pos_encoding", ["relative", "sinusoidal", "learned", "none"])
@pytest.mark.parametrize("frames", [6, 3, 8, 16])
def test_batched_granularities_equal_each_window_run_alone(frames, pos_encoding):
    """One batched pass over all granularities (block-diagonal window mask, stacked weights, unequal
    windows, T < window count) == a loop running every window of every granularity on its own."""
    mgtm = make_mgtm(depth=2, pos_encoding=pos_encoding)
    reduced = mgtm.reduce_tokens(random_tokens(2, frames, seed=1), GRID) + mgtm.token_embedding
    got = mgtm.run_levels(reduced)
    assert got.shape == (3, 2, frames, DIM)
    for level, count in enumerate(mgtm.granularities):
        expected = torch.zeros_like(got[level])
        layout = window_layout(frames, count)
        longest = max(len(w) for w in layout)
        for window in layout:
            table = window_encoding(mgtm, count, len(window), longest)
            x = (reduced[:, list(window)] + table[None, :, None, :]).reshape(2, -1, DIM)
            for block in mgtm.levels[level]:
                x = block(x)
            expected[:, list(window)] = x.view(2, len(window), -1, DIM).mean(dim=2)
        torch.testing.assert_close(got[level], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("frames,windows", [(16, 4), (8, 2), (6, 4), (7, 2), (3, 4), (1, 4), (5, 1)])
def test_frame_windows_match_the_layout(frames, windows):
    window, position = frame_windows(frames, windows)
    for w, members in enumerate(window_layout(frames, windows)):
        assert window[list(members)].tolist() == [w] * len(members)
        assert position[list(members)].tolist() == list(range(len(members)))


def test_clip_output_does_not_depend_on_batch_mates_and_is_deterministic():
    mgtm = make_mgtm()
    tokens = random_tokens(4, 8, seed=2)
    with torch.no_grad():
        _, together = mgtm(tokens)
        _, alone = mgtm(tokens[2:3])
        _, again = mgtm(tokens)
    torch.testing.assert_close(alone, together[2:3], rtol=1e-5, atol=1e-5)
    assert torch.equal(together, again)


def test_fusion_starts_equal_and_input_detach_follows_the_switch():
    for detach in (True, False):
        mgtm = make_mgtm(detach_input=detach).train()
        assert torch.allclose(mgtm.fusion_logits.softmax(0), torch.full((3,), 1 / 3))
        tokens = random_tokens(2, 4).requires_grad_(True)
        f_frame, f_tp = mgtm(tokens)
        (f_frame.sum() + f_tp.sum()).backward()
        assert (tokens.grad is None) == detach
        assert mgtm.fusion_logits.grad is not None and mgtm.levels[2][0].qkv.weight.grad is not None


def test_pooled_grid_keeps_the_aspect_ratio():
    assert pooled_grid(8, (16, 8)) == (4, 2)     # ViT-B/16 at 256x128
    assert pooled_grid(8, (18, 9)) == (4, 2)     # ViT-L/14 at 252x126
    assert pooled_grid(4, (4, 2)) == (2, 2)
    assert pooled_grid(1, (16, 8)) == (1, 1)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="HEADS"):
        make_mgtm(heads=5)
    with pytest.raises(ValueError, match="POS_ENCODING"):
        make_mgtm(pos_encoding="rotary")
    with pytest.raises(ValueError, match="GRANULARITIES"):
        make_mgtm(granularities=(0,))


def test_relative_time_encoding_means_the_same_at_8_and_16_frames():
    """Test clips (16 frames) see the positions of training clips (8 frames): per granularity the mean
    encoding over the clip's frames barely moves, while the absolute index moves it by far more."""
    def mean_shift(mgtm):
        encode = lambda t: mgtm.level_positions(mgtm.token_layout(t, 5, None)[1], t, torch.float32)  # noqa: E731
        return (encode(8).mean(dim=1) - encode(16).mean(dim=1)).norm(dim=1)   # (G,)

    assert mean_shift(make_mgtm(pos_encoding="relative")).max() < 0.1
    assert mean_shift(make_mgtm(pos_encoding="sinusoidal")).min() > 0.5
    # At the training length the relative encoding is the index + 1/2 of each frame in its window.
    mgtm = make_mgtm(pos_encoding="relative")
    torch.testing.assert_close(mgtm.level_positions(mgtm.layout_position, 8, torch.float32),
                               sinusoidal_encoding(mgtm.layout_position.float() + 0.5, DIM))


def test_mgtm_defaults_are_the_authors():
    from configs import get_defaults

    cfg = get_defaults()
    assert cfg.MODEL.MGTM.POS_ENCODING == "relative"
    assert cfg.MODEL.MGTM.FRAME_SOURCE == "whole"


# ----------------------------------------------------------------------------- fusion
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
    with pytest.raises(ValueError, match="GRANULARITIES"):
        make_mgtm(granularities=(2, 4), frame_source="whole")


def test_the_whole_clip_level_is_the_granularity_1_level_wherever_it_is_listed():
    """FRAME_SOURCE "whole" takes f_frame from the granularity-1 level, not from the first one listed: the
    same weights with the granularities listed in another order give the same outputs."""
    first = make_mgtm(granularities=(1, 2, 4), frame_source="whole").eval()
    with torch.no_grad():
        first.fusion_logits.copy_(torch.tensor([0.7, -1.3, 2.1]))
    listed = make_mgtm(granularities=(2, 4, 1), frame_source="whole").eval()
    source = [first.granularities.index(g) for g in listed.granularities]   # listed level i = first's level source[i]
    state = {}
    for key, value in first.state_dict().items():
        if key.startswith("levels."):
            index = int(key.split(".")[1])
            key = f"levels.{source.index(index)}." + key.split(".", 2)[2]
        state[key] = value[source] if key == "fusion_logits" else value
    listed.load_state_dict(state)
    tokens = random_tokens(2, 8, seed=5)
    with torch.no_grad():
        for got, expected in zip(listed(tokens), first(tokens)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
