"""The assembled SAS-VPReID model: CLIP backbone + BNNecks + memory + MGTM + PRSD heads."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import CLIPBackbone, patch_grid
from model.memory import MultiProxyMemory
from model.mgtm import MGTM

EMBED_PART_NAMES = ("cls", "proj", "tp", "shape")


def bnneck(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d whose bias is fixed at 0 (BNNeck): the classifier sees a centred, scaled feature."""
    norm = nn.BatchNorm1d(dim)
    norm.bias.requires_grad_(False)
    return norm


def classifier(in_dim: int, num_classes: int) -> nn.Linear:
    """Bias-free linear classifier with weights drawn from N(0, 0.001²)."""
    layer = nn.Linear(in_dim, num_classes, bias=False)
    nn.init.normal_(layer.weight, std=0.001)
    return layer


class PositionwiseClassifier(nn.Module):
    """One linear classifier per frame position (weights N(0, 0.001²), bias 0 when ``bias``), applied to
    all positions in one batched einsum.

    forward(x (B, T, d)) -> (B, T, C); T must equal the number of positions (the training clip length).
    """

    def __init__(self, num_positions: int, in_dim: int, num_classes: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_positions, num_classes, in_dim))
        nn.init.normal_(self.weight, std=0.001)
        self.bias = nn.Parameter(torch.zeros(num_positions, num_classes)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"the per-frame-position shape classifiers were built for {self.weight.shape[0]} frames "
                f"(DATALOADER.SEQ_LEN) but the training clip has {x.shape[1]}; train with clips of "
                "DATALOADER.SEQ_LEN frames"
            )
        logits = torch.einsum("btd,tcd->btc", x, self.weight.to(x.dtype))
        return logits if self.bias is None else logits + self.bias.to(x.dtype)


class SASModel(nn.Module):
    """SAS-VPReID. forward(frames (B,T,3,H,W), camids (B,), views (B,) or None, labels ignored) -> dict.

    Train mode:
      id_logits {appearance: (B,C) from [BN f_cls; BN f_proj], tp: (B,C), shape: (B,C)},
      triplet_feats {cls: (B,D), proj: (B,P), tp: (B,D), shape: (B,10)} (pre-BN features),
      frame_logits (B,T,C), framewise_shape_logits (B,T,C), betas (B,T,10),
      memory_feat (B,D+P) L2-normalised, memory_logits (B,NUM_PROXIES,C) — each when its module is on.
    Eval mode: embedding (B,E) = concatenation of the post-BN parts named by ``embed_parts``,
      memory_feat (B,D+P), and appearance (B,D+P) = [f_cls; f_proj] before the BNNecks (the memory
      rebuild standardises it itself, see :meth:`appearance_bnneck`); every BatchNorm uses running
      statistics, so a clip's outputs do not depend on its batch-mates.
    """

    def __init__(self, backbone: CLIPBackbone, num_classes: int, memory: MultiProxyMemory | None = None,
                 mgtm: MGTM | None = None, prsd: nn.Module | None = None,
                 embed_parts=EMBED_PART_NAMES, shape_positions: int = 8, shape_dim: int = 10,
                 framewise_bnneck: bool = False):
        super().__init__()
        embed_parts = tuple(embed_parts)
        unknown = [p for p in embed_parts if p not in EMBED_PART_NAMES]
        if unknown or not embed_parts or len(set(embed_parts)) != len(embed_parts):
            raise ValueError(f"MODEL.EMBED_PARTS must be distinct names from {list(EMBED_PART_NAMES)}, "
                             f"got {list(embed_parts)}")
        if "tp" in embed_parts and mgtm is None:
            raise ValueError("MODEL.EMBED_PARTS has 'tp' but MGTM is off: set MODEL.MGTM.ENABLED True or drop 'tp'")
        if "shape" in embed_parts and prsd is None:
            raise ValueError("MODEL.EMBED_PARTS has 'shape' but PRSD is off: set MODEL.PRSD.ENABLED True or drop "
                             "'shape'")
        width, proj_dim = backbone.width, backbone.proj_dim
        if memory is not None and memory.dim != width + proj_dim:
            raise ValueError(f"memory width {memory.dim} != backbone width + projection {width + proj_dim}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.embed_parts = embed_parts

        self.bottleneck_cls = bnneck(width)
        self.bottleneck_proj = bnneck(proj_dim)
        self.classifier_appearance = classifier(width + proj_dim, num_classes)
        self.memory = memory

        self.mgtm = mgtm
        if mgtm is not None:
            self.bottleneck_tp = bnneck(width)
            self.classifier_tp = classifier(width, num_classes)
            self.bottleneck_frame = bnneck(width)
            self.classifier_frame = classifier(width, num_classes)

        self.prsd = prsd
        if prsd is not None:
            self.bottleneck_shape = bnneck(shape_dim)
            self.classifier_shape = classifier(shape_dim, num_classes)
            # The authors' per-frame shape classifiers are Linear with bias on the raw framewise shapes;
            # framewise_bnneck puts a BNNeck before bias-free ones instead.
            self.bottleneck_framewise_shape = bnneck(shape_dim) if framewise_bnneck else None
            self.classifier_framewise_shape = PositionwiseClassifier(shape_positions, shape_dim, num_classes,
                                                                     bias=not framewise_bnneck)

        # False inside :meth:`without_side_info`: the backbone adds no SIE embedding.
        self.use_side_info = True

        part_widths = {"cls": width, "proj": proj_dim, "tp": width, "shape": shape_dim}
        self.embedding_dim = sum(part_widths[p] for p in embed_parts)

    @contextlib.contextmanager
    def without_side_info(self):
        """Encode without the SIE camera / view embeddings inside this block (the authors' memory rebuild)."""
        previous, self.use_side_info = self.use_side_info, False
        try:
            yield self
        finally:
            self.use_side_info = previous

    def appearance_bnneck(self, appearance: torch.Tensor, batch_statistics: bool) -> torch.Tensor:
        """appearance (N, D+P) = [f_cls; f_proj] -> [BN f_cls; BN f_proj] (N, D+P), no autograd state change.

        ``batch_statistics`` True: standardised with the mean and (biased) variance of these N rows, as
        a BatchNorm in train mode with one batch of N, without touching the running statistics;
        False: with the running statistics (eval mode). The BNNecks' affine weights apply either way.
        """
        parts = appearance.split([self.bottleneck_cls.num_features, self.bottleneck_proj.num_features], dim=1)
        out = []
        for x, norm in zip(parts, (self.bottleneck_cls, self.bottleneck_proj)):
            if batch_statistics:
                mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
            else:
                mean, var = norm.running_mean, norm.running_var
            scaled = (x - mean) / torch.sqrt(var + norm.eps)
            out.append(scaled * norm.weight.to(x.dtype) + norm.bias.to(x.dtype))
        return torch.cat(out, dim=1)

    def forward(self, frames: torch.Tensor, camids: torch.Tensor, views: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict:
        """frames (B,T,3,H,W) normalised; camids (B,) long; views (B,) long or None; labels unused
        (accepted so a training step can pass them)."""
        if frames.dim() != 5:
            raise ValueError(f"SASModel expects frames (B, T, 3, H, W), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        grid = patch_grid(frames.shape[-2:], self.backbone.patch_size, self.backbone.stride)
        frame_camids = camids.repeat_interleave(t) if camids is not None else None
        frame_views = views.repeat_interleave(t) if views is not None else None
        tokens, projected = self.backbone(frames.flatten(0, 1), frame_camids, frame_views, side_info=self.use_side_info)
        return self.heads(tokens.view(b, t, *tokens.shape[1:]), projected.view(b, t, *projected.shape[1:]), grid)

    def heads(self, tokens: torch.Tensor, projected: torch.Tensor, grid: tuple[int, int]) -> dict:
        """Everything after the backbone: tokens (B,T,1+L,D), projected (B,T,1+L,P), the patch grid
        (Python ints) -> the output dict of :meth:`forward`. One function so that MODEL.COMPILE can
        compile all heads (BNNecks, classifiers, memory logits, MGTM, PRSD) as one graph."""
        b, t = tokens.shape[:2]
        f_cls = tokens[:, :, 0].mean(dim=1)       # (B, D)
        f_proj = projected[:, :, 0].mean(dim=1)   # (B, P)
        bn_cls = self.bottleneck_cls(f_cls)
        bn_proj = self.bottleneck_proj(f_proj)
        appearance = torch.cat([bn_cls, bn_proj], dim=1)
        memory_feat = F.normalize(appearance.float(), dim=1)
        parts = {"cls": bn_cls, "proj": bn_proj}

        out: dict = {}
        id_logits = {"appearance": self.classifier_appearance(appearance)} if self.training else {}
        triplet_feats = {"cls": f_cls, "proj": f_proj}

        # In eval mode a head runs only when its part is in the embedding.
        if self.mgtm is not None and (self.training or "tp" in self.embed_parts):
            f_frame, f_tp = self.mgtm(tokens, grid)
            bn_tp = self.bottleneck_tp(f_tp)
            parts["tp"] = bn_tp
            if self.training:
                id_logits["tp"] = self.classifier_tp(bn_tp)
                triplet_feats["tp"] = f_tp
                bn_frame = self.bottleneck_frame(f_frame.flatten(0, 1))
                out["frame_logits"] = self.classifier_frame(bn_frame).view(b, t, -1)

        if self.prsd is not None and (self.training or "shape" in self.embed_parts):
            shape = self.prsd(tokens)
            videowise = shape["videowise_shape"]       # (B, 10)
            bn_shape = self.bottleneck_shape(videowise)
            parts["shape"] = bn_shape
            if self.training:
                id_logits["shape"] = self.classifier_shape(bn_shape)
                triplet_feats["shape"] = videowise
                framewise = shape["framewise_shape"]   # (B, T, 10)
                if self.bottleneck_framewise_shape is not None:
                    framewise = self.bottleneck_framewise_shape(framewise.flatten(0, 1)).view(b, t, -1)
                out["framewise_shape_logits"] = self.classifier_framewise_shape(framewise)
                out["betas"] = shape["betas"]

        if not self.training:
            embedding = torch.cat([parts[name].float() for name in self.embed_parts], dim=1)
            return {"embedding": embedding, "memory_feat": memory_feat,
                    "appearance": torch.cat([f_cls.float(), f_proj.float()], dim=1)}

        out["id_logits"] = id_logits
        out["triplet_feats"] = triplet_feats
        if self.memory is not None:
            out["memory_feat"] = memory_feat
            out["memory_logits"] = self.memory.logits(memory_feat)
        return out
