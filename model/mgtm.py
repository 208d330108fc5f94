"""MGTM: multi-granularity temporal modelling with a small transformer over windows of frames.

Per frame the backbone tokens (class token + h×w patch tokens, width D) are reduced to the class
token plus ``SPATIAL_TOKENS`` tokens by adaptive average pooling of the patch grid. For each
granularity g (window count; default 1, 2, 4 = windows of T, T/2, T/4 frames) the clip is cut into
min(g, T) contiguous windows and a transformer attends over all tokens of the frames of one window.
Each frame's output is the mean of its output tokens; a granularity's clip vector is the mean over
frames; granularities are fused with learned softmax weights (initialised equal) and a LayerNorm.

Cost choice (why the spatial tokens are pooled). Attention over all tokens of T=16 frames of
ViT-L/14 at 252×126 (18×9 patches + class = 163 tokens per frame) means 2608 tokens per clip: per
transformer layer ≈ 16·D²·N + 4·N²·D FLOPs ≈ 44 + 28 = 72 GFLOPs for D=1024, MLP ratio 2, i.e.
≈ 215 GFLOPs for three granularities — as much as the backbone itself. With the class token plus
8 pooled tokens per frame (N = 16·9 = 144 for the whole clip) a layer costs ≈ 2.4 + 0.09 GFLOPs,
≈ 7.4 GFLOPs per clip for the three granularities (ViT-B/16, D=768: ≈ 4.2 GFLOPs), about 2.5 % of
the backbone, and the attention matrix shrinks ~330×. The pooled grid keeps the patch grid's aspect
ratio (8 tokens on a 2:1 grid = 4×2 cells).

Windows of unequal length (T not divisible by g) are allowed; when T < g every frame is its own
window. All granularities run as one batch: each sees the whole clip and a block-diagonal attention
mask keeps every token inside its window (exactly windowed attention, one kernel per op for all
granularities).

Temporal position encoding (``pos_encoding``), of a frame's place inside its window:

* ``"relative"`` (default): sinusoidal encoding of the frame's *fraction* of its window, (i + ½) / L,
  scaled by the window length at the training clip length (``max_frames`` / g), so at the training
  length it is the index (+½) and a 16-frame test clip sees the same range of positions as the
  8-frame training clips. The authors' Mamba has no position encoding (order comes from its scan);
  attention is order-blind without one, and an absolute index would put test frames 8-15 at
  positions never seen in training (the whole-clip level's mean encoding moves by a vector of norm
  ~6 between T=8 and T=16).
* ``"sinusoidal"``: the absolute index i (extrapolates beyond the training length).
* ``"learned"``: a table of ``max_frames`` rows, linearly interpolated to the longest window.
* ``"none"``: no temporal encoding (order-free attention).

Outputs (``frame_source``): ``"whole"`` (the authors) takes the per-frame feature f_frame from the
whole-clip level (granularity 1) through its own LayerNorm, and f_tp = LayerNorm(Σ_g w_g · c_g) with
c_g the mean over frames of level g, the whole-clip level entering as the mean of its normalised
frames; ``"fused"`` takes both from the softmax-fused levels through one shared LayerNorm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pooled_grid(num_tokens: int, grid_size: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) factorisation of ``num_tokens`` whose aspect ratio is closest to the grid's.

    Factorisations that fit inside the grid come first (no upsampling); ties go to the squarer one.
    """
    if num_tokens < 1:
        raise ValueError(f"MODEL.MGTM.SPATIAL_TOKENS must be >= 1, got {num_tokens}")
    rows, cols = grid_size
    target = math.log(rows / cols)
    pairs = [(r, num_tokens // r) for r in range(1, num_tokens + 1) if num_tokens % r == 0]
    return min(pairs, key=lambda rc: (rc[0] > rows or rc[1] > cols, round(abs(math.log(rc[0] / rc[1]) - target), 9),
                                      abs(math.log(rc[0] / rc[1]))))


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions (...,) float -> (..., dim) sin/cos encoding of the usual transformer form."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    angles = positions.float()[..., None] * freqs
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        encoding = F.pad(encoding, (0, 1))
    return encoding


POS_ENCODINGS = ("relative", "sinusoidal", "learned", "none")
FRAME_SOURCES = ("whole", "fused")


def window_layout(num_frames: int, num_windows: int) -> tuple[tuple[int, ...], ...]:
    """Contiguous split of ``num_frames`` frames into min(num_windows, num_frames) windows.

    Boundaries are floor(i·T/n), so window lengths differ by at most one frame. Plain Python on
    ints: under torch.compile the layout is a trace-time constant.
    """
    count = min(num_windows, num_frames)
    bounds = [(i * num_frames) // count for i in range(count + 1)]
    return tuple(tuple(range(bounds[i], bounds[i + 1])) for i in range(count))


def frame_windows(num_frames: int, num_windows: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(window of each frame (T,) long, position of each frame inside its window (T,) long) of
    :func:`window_layout`, computed on ``device`` from an arange (no host-to-device copy).

    Frame t lies in window ((t+1)·n − 1) // T (the inverse of the floor(i·T/n) boundaries) and sits
    at t − floor(w·T/n) inside it.
    """
    count = min(num_windows, num_frames)
    frame = torch.arange(num_frames, device=device)
    window = ((frame + 1) * count - 1) // num_frames
    return window, frame - (window * num_frames) // count


def frame_window_lengths(num_frames: int, num_windows: int, device=None) -> torch.Tensor:
    """Length (T,) long of the window of :func:`window_layout` that holds each frame (device ops only)."""
    count = min(num_windows, num_frames)
    window, _ = frame_windows(num_frames, num_windows, device)
    return ((window + 1) * num_frames) // count - (window * num_frames) // count


class TemporalBlock(nn.Module):
    """Pre-norm transformer layer on (N, L, D) with an optional key mask (N, L) bool (True = real token)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MODEL.MGTM.HEADS ({heads}) must divide the token width {dim}")
        self.heads = heads
        self.dropout = dropout
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.residual_dropout(self.attn_out(attended.transpose(1, 2).reshape(n, length, dim)))
        return x + self.residual_dropout(self.mlp(self.norm_mlp(x)))


class MGTM(nn.Module):
    """Multi-granularity temporal transformer.

    forward(tokens (B,T,1+h·w,D)) -> (f_frame (B,T,D), f_tp (B,D)).
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], granularities=(1, 2, 4), spatial_tokens: int = 8,
                 depth: int = 1, heads: int = 8, mlp_ratio: float = 2.0, dropout: float = 0.0,
                 pos_encoding: str = "relative", detach_input: bool = True, max_frames: int = 8,
                 frame_source: str = "whole"):
        super().__init__()
        granularities = tuple(int(g) for g in granularities)
        if not granularities or min(granularities) < 1:
            raise ValueError(f"MODEL.MGTM.GRANULARITIES must be window counts >= 1, got {list(granularities)}")
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"MODEL.MGTM.POS_ENCODING must be one of {list(POS_ENCODINGS)}, got {pos_encoding!r}")
        if frame_source not in FRAME_SOURCES:
            raise ValueError(f"MODEL.MGTM.FRAME_SOURCE must be one of {list(FRAME_SOURCES)}, got {frame_source!r}")
        if frame_source == "whole" and 1 not in granularities:
            raise ValueError("MODEL.MGTM.FRAME_SOURCE 'whole' takes the frame features from the whole-clip level: "
                             f"MODEL.MGTM.GRANULARITIES {list(granularities)} needs a 1 (or set FRAME_SOURCE 'fused')")
        if depth < 1:
            raise ValueError(f"MODEL.MGTM.DEPTH must be >= 1, got {depth}")
        self.dim = dim
        self.grid_size = tuple(grid_size)
        self.granularities = granularities
        self.pool_size = pooled_grid(spatial_tokens, self.grid_size)
        self.tokens_per_frame = 1 + spatial_tokens
        self.pos_encoding = pos_encoding
        self.frame_source = frame_source
        self.detach_input = detach_input
        # Which of the 1+S tokens of a frame this is (class token vs pooled cell), shared by all frames.
        self.token_embedding = nn.Parameter(torch.zeros(self.tokens_per_frame, dim))
        nn.init.trunc_normal_(self.token_embedding, std=0.02)
        if pos_encoding == "learned":
            self.temporal_embedding = nn.Parameter(torch.zeros(max(2, max_frames), dim))
            nn.init.trunc_normal_(self.temporal_embedding, std=0.02)
        else:
            self.register_parameter("temporal_embedding", None)
        self.levels = nn.ModuleList(
            nn.ModuleList(TemporalBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)) for _ in granularities
        )
        # Zeros -> softmax gives every granularity the same weight at the start.
        self.fusion_logits = nn.Parameter(torch.zeros(len(granularities)))
        # The fusion's LayerNorm (the authors' norm3); with frame_source "whole" the whole-clip level's
        # frames get their own (norm4).
        self.norm = nn.LayerNorm(dim)
        self.frame_norm = nn.LayerNorm(dim) if frame_source == "whole" else None
        self.whole_level = granularities.index(1) if frame_source == "whole" else None
        # The layout of the training clip length, built once (not per step); other lengths are built on
        # the fly. Not persistent: derived from the config, so checkpoints stay as they were.
        self.layout_frames = max_frames
        token_mask, position = self.token_layout(max_frames, self.tokens_per_frame, None)
        self.register_buffer("layout_token_mask", token_mask, persistent=False)
        self.register_buffer("layout_position", position, persistent=False)
        if pos_encoding in ("sinusoidal", "relative"):
            self.register_buffer("layout_sinusoid", self.level_positions(position, max_frames, torch.float32),
                                 persistent=False)

    def extra_repr(self) -> str:
        return (f"granularities={self.granularities}, pool_size={self.pool_size}, "
                f"pos_encoding={self.pos_encoding!r}, frame_source={self.frame_source!r}, "
                f"detach_input={self.detach_input}")

    def reduce_tokens(self, tokens: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """tokens (B,T,1+h·w,D) -> (B,T,1+S,D): class token + adaptive-average-pooled patch grid."""
        b, t, length, dim = tokens.shape
        rows, cols = grid_size
        if length != 1 + rows * cols:
            raise ValueError(f"MGTM expects 1 + {rows}x{cols} tokens per frame, got {length}")
        patches = tokens[:, :, 1:].reshape(b * t, rows, cols, dim).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(patches, self.pool_size).flatten(2).transpose(1, 2)  # (B·T, S, D)
        return torch.cat([tokens[:, :, :1], pooled.reshape(b, t, -1, dim)], dim=2)

    def temporal_table(self, length: int, device, dtype) -> torch.Tensor:
        """(length, D) encoding of the positions 0..length-1 inside a window."""
        if self.temporal_embedding is None:
            return sinusoidal_encoding(torch.arange(length, device=device), self.dim).to(dtype)
        table = self.temporal_embedding
        if table.shape[0] != length:
            table = F.interpolate(table.t()[None], size=length, mode="linear", align_corners=True)[0].t()
        return table.to(dtype)

    def token_layout(self, num_frames: int, tokens_per_frame: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_mask (G, T·K, T·K) bool: tokens i and j lie in frames of one window at granularity g;
        position (G, T) long: each frame's index inside its window). Shapes depend only on T, K and
        the granularities (Python ints), so a traced graph holds no data-dependent shape."""
        windows, positions = zip(*(frame_windows(num_frames, g, device) for g in self.granularities))
        window = torch.stack(windows).repeat_interleave(tokens_per_frame, dim=1)  # (G, T·K)
        return window[:, :, None] == window[:, None, :], torch.stack(positions)

    def level_positions(self, position: torch.Tensor, num_frames: int, dtype) -> torch.Tensor:
        """position (G, T) -> (G, T, D) temporal encoding of every frame at every granularity."""
        if self.pos_encoding == "none":
            return torch.zeros(len(self.granularities), num_frames, self.dim, dtype=dtype, device=position.device)
        if self.temporal_embedding is None:
            if num_frames == self.layout_frames and hasattr(self, "layout_sinusoid"):
                return self.layout_sinusoid.to(dtype)
            if self.pos_encoding == "relative":
                return sinusoidal_encoding(self.relative_positions(num_frames, position.device), self.dim).to(dtype)
            return sinusoidal_encoding(position, self.dim).to(dtype)
        # The learned table is interpolated to each granularity's longest window, as for a window alone.
        rows = []
        for level, g in enumerate(self.granularities):
            longest = -(-num_frames // min(g, num_frames))
            rows.append(self.temporal_table(longest, position.device, dtype)[position[level]])
        return torch.stack(rows)

    def relative_positions(self, num_frames: int, device=None) -> torch.Tensor:
        """(G, T) float: each frame's (index + ½) / window length, times the window length of that
        granularity at the training clip length (``max_frames`` / g)."""
        rows = []
        for g in self.granularities:
            _, position = frame_windows(num_frames, g, device)
            length = frame_window_lengths(num_frames, g, device)
            train_length = self.layout_frames / min(g, self.layout_frames)
            rows.append((position.float() + 0.5) / length.float() * train_length)
        return torch.stack(rows)

    def run_levels(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,T,K,D) with K = 1+S -> per-frame vectors (G,B,T,D) of every granularity.

        All granularities and all windows run as one batch: every granularity sees the whole clip
        (T·K tokens) and a block-diagonal attention mask keeps each token inside its window. That is
        the windowed attention exactly (masked keys get weight 0), with one kernel per op for all
        granularities instead of one pass per granularity with a gather and a scatter.
        """
        b, t, k, dim = tokens.shape
        levels = len(self.granularities)
        if (t, k) == (self.layout_frames, self.tokens_per_frame):
            token_mask, position = self.layout_token_mask, self.layout_position
        else:
            token_mask, position = self.token_layout(t, k, tokens.device)
        attn_mask = token_mask[:, None, None].expand(levels, b, 1, t * k, t * k).reshape(levels * b, 1, t * k, t * k)
        x = tokens[None] + self.level_positions(position, t, tokens.dtype)[:, None, :, None, :]  # (G,B,T,K,D)
        x = x.reshape(levels, b * t * k, dim)
        for depth in range(len(self.levels[0])):
            x = stacked_block(x, [blocks[depth] for blocks in self.levels], attn_mask, b, self.training)
        return x.view(levels, b, t, k, dim).mean(dim=3)

    def forward(self, tokens: torch.Tensor, grid_size: tuple[int, int] | None = None):
        """tokens (B,T,1+h·w,D) backbone tokens after ln_post -> (f_frame (B,T,D), f_tp (B,D))."""
        if tokens.dim() != 4 or tokens.shape[-1] != self.dim:
            raise ValueError(f"MGTM expects tokens (B, T, 1+L, {self.dim}), got {tuple(tokens.shape)}")
        if self.detach_input:
            tokens = tokens.detach()
        reduced = self.reduce_tokens(tokens, tuple(grid_size or self.grid_size)) + self.token_embedding.to(tokens.dtype)
        weights = self.fusion_logits.softmax(0).to(reduced.dtype)
        per_level = self.run_levels(reduced)  # (G, B, T, D)
        if self.frame_norm is None:  # "fused"
            fused_frames = torch.einsum("g,gbtd->btd", weights, per_level)
            return self.norm(fused_frames), self.norm(fused_frames.mean(dim=1))
        f_frame = self.frame_norm(per_level[self.whole_level])              # (B, T, D)
        clip_vectors = per_level.mean(dim=2)                                 # (G, B, D)
        clip_vectors = torch.cat([clip_vectors[:self.whole_level], f_frame.mean(dim=1)[None],
                                  clip_vectors[self.whole_level + 1:]])
        f_tp = self.norm(torch.einsum("g,gbd->bd", weights, clip_vectors))
        return f_frame, f_tp


def _stacked_linear(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    """x (G, N, in) -> (G, N, out): layer g applied to x[g], one batched matmul for all G."""
    weight = torch.stack([layer.weight for layer in layers]).to(x.dtype)   # (G, out, in)
    bias = torch.stack([layer.bias for layer in layers]).to(x.dtype)       # (G, out)
    return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))


def _stacked_layer_norm(x: torch.Tensor, norms: list[nn.LayerNorm]) -> torch.Tensor:
    """x (G, N, D) -> LayerNorm g applied to x[g] (shared normalisation, per-G affine)."""
    weight = torch.stack([norm.weight for norm in norms])[:, None, :]
    bias = torch.stack([norm.bias for norm in norms])[:, None, :]
    # The normalised shape from the module, not from x: a traced export needs it constant.
    normed = F.layer_norm(x, norms[0].normalized_shape, eps=norms[0].eps)
    return torch.addcmul(bias.to(x.dtype), normed, weight.to(x.dtype))


def stacked_block(x: torch.Tensor, blocks: list[TemporalBlock], attn_mask: torch.Tensor, batch: int,
                  training: bool) -> torch.Tensor:
    """TemporalBlock g applied to x[g] for every g at once: x (G, B·L, D) -> (G, B·L, D).

    attn_mask (G·B, 1, L, L) bool (True = may attend). The weights of the G blocks are stacked per
    call, so the parameters (and checkpoints) stay those of the separate blocks.
    """
    levels, rows, dim = x.shape
    length, heads = rows // batch, blocks[0].heads
    dropout = blocks[0].dropout if training else 0.0
    qkv = _stacked_linear(_stacked_layer_norm(x, [blk.norm_attn for blk in blocks]), [blk.qkv for blk in blocks])
    q, k, v = qkv.view(levels * batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
    attended = attended.transpose(1, 2).reshape(levels, rows, dim)
    x = x + F.dropout(_stacked_linear(attended, [blk.attn_out for blk in blocks]), dropout, training)
    hidden = _stacked_linear(_stacked_layer_norm(x, [blk.norm_mlp for blk in blocks]), [blk.mlp[0] for blk in blocks])
    hidden = F.dropout(F.gelu(hidden), dropout, training)
    return x + F.dropout(_stacked_linear(hidden, [blk.mlp[3] for blk in blocks]), dropout, training)


def build_mgtm(cfg, dim: int, grid_size: tuple[int, int]) -> MGTM:
    """MGTM from ``cfg.MODEL.MGTM``; the learned temporal table has DATALOADER.SEQ_LEN rows."""
    mc = cfg.MODEL.MGTM
    return MGTM(
        dim=dim,
        grid_size=grid_size,
        granularities=tuple(mc.GRANULARITIES),
        spatial_tokens=mc.SPATIAL_TOKENS,
        depth=mc.DEPTH,
        heads=mc.HEADS,
        mlp_ratio=mc.MLP_RATIO,
        dropout=cfg.MODEL.MGTM.DROPOUT,
        pos_encoding=mc.POS_ENCODING,
        detach_input=cfg.MODEL.MGTM.DETACH_INPUT,
        max_frames=cfg.DATALOADER.SEQ_LEN,
        frame_source=mc.FRAME_SOURCE,
    )
