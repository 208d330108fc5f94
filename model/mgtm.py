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

Windows of unequal length (T not divisible by g) are padded to the longest window and masked in
attention and pooling; when T < g every frame is its own window. The temporal position encoding is
the frame's index inside its window: sinusoidal (any length) or a learned table of
``max_frames`` rows linearly interpolated to the window length.
"""
from __future__ import annotations

import math
from functools import lru_cache

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


@lru_cache(maxsize=64)
def window_layout(num_frames: int, num_windows: int) -> tuple[tuple[int, ...], ...]:
    """Contiguous split of ``num_frames`` frames into min(num_windows, num_frames) windows.

    Boundaries are floor(i·T/n), so window lengths differ by at most one frame.
    """
    count = min(num_windows, num_frames)
    bounds = [(i * num_frames) // count for i in range(count + 1)]
    return tuple(tuple(range(bounds[i], bounds[i + 1])) for i in range(count))


@lru_cache(maxsize=64)
def window_slots(num_frames: int, num_windows: int):
    """CPU index tensors of the padded window layout (built once per (T, g), no device syncs later).

    Returns (index (n, longest) frame of each slot, 0 in padding; valid (n, longest) bool;
    real_slots (T,) flat slot of every real frame; frame_of_slot (T,) its frame index).
    """
    windows = window_layout(num_frames, num_windows)
    longest = max(len(w) for w in windows)
    index = torch.zeros(len(windows), longest, dtype=torch.long)
    valid = torch.zeros(len(windows), longest, dtype=torch.bool)
    for w, frames in enumerate(windows):  # at most g windows; shapes only, never the batch
        index[w, : len(frames)] = torch.tensor(frames, dtype=torch.long)
        valid[w, : len(frames)] = True
    real_slots = valid.flatten().nonzero().squeeze(1)
    return index, valid, real_slots, index.flatten()[real_slots]


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
                 pos_encoding: str = "sinusoidal", detach_input: bool = True, max_frames: int = 8):
        super().__init__()
        granularities = tuple(int(g) for g in granularities)
        if not granularities or min(granularities) < 1:
            raise ValueError(f"MODEL.MGTM.GRANULARITIES must be window counts >= 1, got {list(granularities)}")
        if pos_encoding not in ("sinusoidal", "learned"):
            raise ValueError(f"MODEL.MGTM.POS_ENCODING must be 'sinusoidal' or 'learned', got {pos_encoding!r}")
        if depth < 1:
            raise ValueError(f"MODEL.MGTM.DEPTH must be >= 1, got {depth}")
        self.dim = dim
        self.grid_size = tuple(grid_size)
        self.granularities = granularities
        self.pool_size = pooled_grid(spatial_tokens, self.grid_size)
        self.tokens_per_frame = 1 + spatial_tokens
        self.pos_encoding = pos_encoding
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
        self.norm = nn.LayerNorm(dim)

    def extra_repr(self) -> str:
        return (f"granularities={self.granularities}, pool_size={self.pool_size}, "
                f"pos_encoding={self.pos_encoding!r}, detach_input={self.detach_input}")

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

    def run_level(self, level: int, tokens: torch.Tensor, num_windows: int) -> torch.Tensor:
        """tokens (B,T,K,D) with K = 1+S -> per-frame vectors (B,T,D) of one granularity."""
        b, t, k, dim = tokens.shape
        index, valid, real_slots, frame_of_slot = window_slots(t, num_windows)
        count, longest = index.shape
        padded = not bool(valid.all())  # a CPU tensor: no device sync
        index, valid = index.to(tokens.device), valid.to(tokens.device)
        real_slots, frame_of_slot = real_slots.to(tokens.device), frame_of_slot.to(tokens.device)

        x = tokens[:, index.flatten()].view(b, count, longest, k, dim)
        x = x + self.temporal_table(longest, tokens.device, tokens.dtype)[None, None, :, None, :]
        x = x.reshape(b * count, longest * k, dim)
        key_mask = None
        if padded:
            key_mask = valid[:, :, None].expand(count, longest, k).reshape(1, count, longest * k)
            key_mask = key_mask.expand(b, -1, -1).reshape(b * count, longest * k)
        for block in self.levels[level]:
            x = block(x, key_mask)
        per_frame = x.view(b, count, longest, k, dim).mean(dim=3).reshape(b, count * longest, dim)
        # Scatter window slots back to frame order; padded slots are dropped.
        out = per_frame.new_zeros(b, t, dim)
        out[:, frame_of_slot] = per_frame[:, real_slots]
        return out

    def forward(self, tokens: torch.Tensor, grid_size: tuple[int, int] | None = None):
        """tokens (B,T,1+h·w,D) backbone tokens after ln_post -> (f_frame (B,T,D), f_tp (B,D))."""
        if tokens.dim() != 4 or tokens.shape[-1] != self.dim:
            raise ValueError(f"MGTM expects tokens (B, T, 1+L, {self.dim}), got {tuple(tokens.shape)}")
        if self.detach_input:
            tokens = tokens.detach()
        reduced = self.reduce_tokens(tokens, tuple(grid_size or self.grid_size)) + self.token_embedding.to(tokens.dtype)
        weights = self.fusion_logits.softmax(0)
        per_level = torch.stack(
            [self.run_level(i, reduced, g) for i, g in enumerate(self.granularities)], dim=0
        )  # (G, B, T, D)
        fused_frames = torch.einsum("g,gbtd->btd", weights.to(per_level.dtype), per_level)
        f_frame = self.norm(fused_frames)
        f_tp = self.norm(fused_frames.mean(dim=1))
        return f_frame, f_tp


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
        detach_input=mc.DETACH_INPUT,
        max_frames=cfg.DATALOADER.SEQ_LEN,
    )
