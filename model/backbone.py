"""CLIP ViT image tower (open_clip architecture) for video ReID frames.

The tower is open_clip's ``VisionTransformer`` built with random weights (never downloaded
implicitly), adapted to the ReID setting:

* non-square input (256x128, 252x126) and an optional overlapping patch stride: the patch grid is
  ``h = (H - p) // s + 1``, ``w = (W - p) // s + 1`` and the pretrained square positional embedding
  is resized (bilinear as the authors, or bicubic: ``MODEL.POS_EMBED_INTERP``; in fp32) to ``h x w``
  with the class position kept;
* SIE: a learned camera embedding (and optionally a view embedding) added to the class token
  before the positional embedding;
* frozen patch projection, class embedding, positional embedding and ``ln_pre`` (config key);
* the forward returns every token after ``ln_post`` and their projection, not just the pooled
  class token.

Pretrained weights come from ``MODEL.PRETRAIN_PATH`` or ``MODEL.PRETRAIN_TAG``; finding and
reading the weight file (OpenAI TorchScript archive, open_clip / timm state dict, ``.safetensors``)
is ``model.weights``' job. This module builds the tower and fits those tensors into it.

open_clip is imported lazily: importing this module stays cheap and a missing weight file is
reported before any heavy import.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.weights import clip_visual_state_dict, is_torchscript_archive, pretrained_weights_path, read_weight_file

logger = logging.getLogger(__name__)

# Small towers for tests and the CPU demo: built without any download.
TINY_CONFIGS: Dict[str, dict] = {
    "tiny-vit-16": dict(width=64, layers=2, heads=2, patch_size=16, proj_dim=32, mlp_ratio=4.0),
    "tiny-vit-8": dict(width=64, layers=2, heads=2, patch_size=8, proj_dim=32, mlp_ratio=4.0),
}

# Vision-config keys of open_clip model configs that this tower reproduces; any other key
# (timm towers, attentional pooling, layer scale, ...) changes the architecture and is refused.
_SUPPORTED_OPEN_CLIP_VISION_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}

# Parameters that the tower does not get from pretrained CLIP weights.
NEW_PARAMETER_NAMES = ("sie_camera", "sie_view")

# Parameters frozen by MODEL.FREEZE_PATCH_EMBED (the patch embedding stage of the tower).
FROZEN_PARAMETER_PREFIXES = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")


# ----------------------------------------------------------------------------- configs and grids
def vision_config(name: str) -> dict:
    """Architecture of a named tower: width, layers, heads, patch_size, proj_dim, mlp_ratio.

    ``name`` is a tiny built-in (``TINY_CONFIGS``) or a local open_clip model name such as
    ``"ViT-B-16"`` / ``"ViT-L-14"`` (hub names are refused: building must not download).
    """
    if name in TINY_CONFIGS:
        return dict(TINY_CONFIGS[name])
    if ":" in name:
        raise ValueError(f"MODEL.BACKBONE {name!r}: hub model names are not supported; use a local open_clip "
                         "name such as ViT-B-16 or ViT-L-14 and give the weights with MODEL.PRETRAIN_PATH.")
    from open_clip import get_model_config, list_models

    model_cfg = get_model_config(name)
    if model_cfg is None:
        vit_names = [n for n in list_models() if n.startswith("ViT-")][:12]
        raise ValueError(f"MODEL.BACKBONE {name!r} is neither a built-in tiny tower {sorted(TINY_CONFIGS)} nor an "
                         f"open_clip model name (e.g. {', '.join(vit_names)}).")
    vision = dict(model_cfg["vision_cfg"])
    unsupported = sorted(set(vision) - _SUPPORTED_OPEN_CLIP_VISION_KEYS)
    if unsupported or not isinstance(vision.get("layers"), int):
        raise ValueError(f"MODEL.BACKBONE {name!r}: its open_clip vision config uses {unsupported or 'a ResNet'}, "
                         "which this plain-ViT tower does not reproduce. Use ViT-B-16, ViT-L-14 or a similar ViT.")
    width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    return dict(width=width, layers=int(vision["layers"]), heads=width // head_width,
                patch_size=int(vision.get("patch_size", 16)), proj_dim=int(model_cfg["embed_dim"]),
                mlp_ratio=float(vision.get("mlp_ratio", 4.0)))


def patch_grid(image_size: Sequence[int], patch_size: int, stride: int) -> Tuple[int, int]:
    """Patch grid (h, w) of an (H, W) image: ``h = (H - p) // s + 1``, ``w = (W - p) // s + 1``."""
    height, width = int(image_size[0]), int(image_size[1])
    if height < patch_size or width < patch_size or stride <= 0:
        raise ValueError(f"Image size {height}x{width} with patch {patch_size} and stride {stride} gives no patch; "
                         "check INPUT.SIZE_TRAIN / INPUT.SIZE_TEST and MODEL.STRIDE_SIZE.")
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic")


def resize_positional_embedding(positional: Tensor, new_grid: Sequence[int],
                                old_grid: Optional[Sequence[int]] = None, mode: str = "bilinear") -> Tensor:
    """Resize a ViT positional embedding to another patch grid, keeping the class position.

    positional (1 + h0*w0, D), any float dtype -> (1 + h*w, D) float32. ``old_grid`` defaults to
    the square grid implied by the token count. ``mode`` "bilinear" (the authors') or "bicubic",
    in fp32 (fp16 archives are cast first: interpolation on fp16 loses precision and bicubic is not
    implemented on every device).
    """
    if mode not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"MODEL.POS_EMBED_INTERP must be one of {list(POS_EMBED_INTERPOLATIONS)}, got {mode!r}")
    positional = positional.detach().float()
    if positional.dim() == 3 and positional.shape[0] == 1:  # timm layout (1, 1+L, D)
        positional = positional[0]
    count, dim = positional.shape
    if old_grid is None:
        side = math.isqrt(count - 1)
        if side * side != count - 1:
            raise ValueError(f"Positional embedding with {count - 1} patch positions is not a square grid; "
                             "pass old_grid=(h, w).")
        old_grid = (side, side)
    old_h, old_w = int(old_grid[0]), int(old_grid[1])
    new_h, new_w = int(new_grid[0]), int(new_grid[1])
    if old_h * old_w != count - 1:
        raise ValueError(f"Positional embedding has {count - 1} patch positions, not {old_h}x{old_w}.")
    class_position, patch_positions = positional[:1], positional[1:]
    if (old_h, old_w) == (new_h, new_w):
        return positional.clone()
    grid = patch_positions.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_h, new_w), mode=mode, align_corners=False)
    patch_positions = grid.permute(0, 2, 3, 1).reshape(new_h * new_w, dim)
    return torch.cat([class_position, patch_positions], dim=0)


# ----------------------------------------------------------------------------- the tower
class CLIPBackbone(nn.Module):
    """CLIP ViT image tower returning all tokens, with SIE and a non-square patch grid.

    Parameter names follow open_clip's ``VisionTransformer`` (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N``, ``ln_post``, ``proj``) plus
    ``sie_camera`` (num_cameras, D) and ``sie_view`` (num_views, D) when enabled.
    """

    def __init__(self, name: str = "ViT-B-16", image_size: Sequence[int] = (256, 128), stride: int = 0,
                 num_cameras: int = 0, num_views: int = 0, sie_coe: float = 1.0,
                 freeze_patch_embed: bool = True, quick_gelu: bool = True,
                 pretrain_path: str = "", pretrain_tag: str = "", pos_embed_interp: str = "bilinear"):
        """Build with random weights, then load ``pretrain_path`` (or the open_clip ``pretrain_tag``).

        num_cameras / num_views: size of the SIE tables (0 = no camera / view embedding).
        pos_embed_interp: how the pretrained square positional embedding is resized to the patch grid.
        """
        super().__init__()
        if pos_embed_interp not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(f"MODEL.POS_EMBED_INTERP must be one of {list(POS_EMBED_INTERPOLATIONS)}, "
                             f"got {pos_embed_interp!r}")
        self.pos_embed_interp = pos_embed_interp
        # Resolve the weight file first so that a missing file fails before any heavy work.
        weights_path = pretrained_weights_path(name, pretrain_path, pretrain_tag,
                                               builtin_tower=name in TINY_CONFIGS)

        from open_clip.transformer import LayerNorm, QuickGELU, VisionTransformer

        arch = vision_config(name)
        self.name = name
        self.width: int = arch["width"]
        self.proj_dim: int = arch["proj_dim"]
        self.patch_size: int = arch["patch_size"]
        self.stride: int = int(stride) or self.patch_size
        self.image_size: Tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        self.grid_size: Tuple[int, int] = patch_grid(self.image_size, self.patch_size, self.stride)
        self.num_layers: int = arch["layers"]
        self.sie_coe = float(sie_coe)

        # open_clip's tower sized so that its positional embedding has one row per patch of our grid
        # (it derives the grid as image // patch); the stride is set on conv1 afterwards.
        tower = VisionTransformer(
            image_size=(self.grid_size[0] * self.patch_size, self.grid_size[1] * self.patch_size),
            patch_size=self.patch_size, width=self.width, layers=arch["layers"], heads=arch["heads"],
            mlp_ratio=arch["mlp_ratio"], output_dim=self.proj_dim,
            act_layer=QuickGELU if quick_gelu else nn.GELU, norm_layer=LayerNorm)
        tower.conv1.stride = (self.stride, self.stride)
        self.conv1 = tower.conv1
        self.class_embedding = tower.class_embedding
        self.positional_embedding = tower.positional_embedding
        self.ln_pre = tower.ln_pre
        self.transformer = tower.transformer  # open_clip blocks: nn.MultiheadAttention -> SDPA kernels
        self.ln_post = tower.ln_post
        self.proj = tower.proj

        self.sie_camera = nn.Parameter(torch.empty(num_cameras, self.width)) if num_cameras > 0 else None
        self.sie_view = nn.Parameter(torch.empty(num_views, self.width)) if num_views > 0 else None
        for table in (self.sie_camera, self.sie_view):
            if table is not None:
                # truncated at two standard deviations (torch's default bounds are +-2 absolute)
                nn.init.trunc_normal_(table, std=0.02, a=-0.04, b=0.04)

        self.loaded_from: Optional[str] = None
        if weights_path is not None:
            self.load_clip_weights(read_weight_file(weights_path), source=weights_path)
            if is_torchscript_archive(weights_path) and not quick_gelu:
                logger.warning("%s is an OpenAI CLIP archive (trained with QuickGELU) but MODEL.QUICK_GELU is "
                               "False: features will be off; set MODEL.QUICK_GELU True.", weights_path)
            if pretrain_tag and not pretrain_path:
                from open_clip.pretrained import get_pretrained_cfg

                tag_quick_gelu = bool(get_pretrained_cfg(name, pretrain_tag).get("quick_gelu", False))
                if tag_quick_gelu != quick_gelu:
                    logger.warning("open_clip weights %s/%s were trained with %s but MODEL.QUICK_GELU is %s; set "
                                   "MODEL.QUICK_GELU %s.", name, pretrain_tag,
                                   "QuickGELU" if tag_quick_gelu else "GELU", quick_gelu, tag_quick_gelu)
        else:
            logger.warning("Backbone %s: no pretrained weights (MODEL.PRETRAIN_PATH and MODEL.PRETRAIN_TAG empty); "
                           "random init, for tests and size reports only.", name)

        if freeze_patch_embed:
            for param_name, param in self.named_parameters():
                if param_name.startswith(FROZEN_PARAMETER_PREFIXES):
                    param.requires_grad_(False)

    def load_clip_weights(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load CLIP image-tower weights (any naming ``clip_visual_state_dict`` accepts); the square
        positional embedding is resized to this tower's grid. Raises on missing or mis-shaped tensors."""
        visual = clip_visual_state_dict(state, source)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(NEW_PARAMETER_NAMES)}
        positional = visual.get("positional_embedding")
        if positional is not None:
            positional = positional.reshape(-1, positional.shape[-1])
            count = positional.shape[0] - 1
            side = math.isqrt(count)
            if side * side == count and (side, side) != self.grid_size:
                visual["positional_embedding"] = resize_positional_embedding(positional, self.grid_size, (side, side),
                                                                                mode=self.pos_embed_interp)
                logger.info("%s: positional embedding resized from %dx%d to %dx%d patches", source, side, side,
                            *self.grid_size)
            elif count != self.grid_size[0] * self.grid_size[1]:
                raise ValueError(f"{source}: positional embedding has {count} patch positions, neither a square grid "
                                 f"nor this tower's {self.grid_size[0]}x{self.grid_size[1]}.")
        missing = sorted(set(own) - set(visual))
        unexpected = sorted(set(visual) - set(own))
        mismatched = [f"{k}: file {tuple(visual[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in own if k in visual and visual[k].shape != own[k].shape]
        if missing or mismatched:
            raise ValueError(f"{source} does not fit backbone {self.name} (width {self.width}, patch "
                             f"{self.patch_size}, {self.num_layers} layers): missing {missing[:6]}"
                             f"{' ...' if len(missing) > 6 else ''}, shape mismatch {mismatched[:4]}. "
                             "Is MODEL.BACKBONE the architecture of these weights?")
        if unexpected:
            logger.warning("%s: ignoring %d image-tower tensors this backbone does not have: %s", source,
                           len(unexpected), unexpected[:8])
        self.load_state_dict({k: visual[k] for k in own}, strict=False)
        self.loaded_from = source
        logger.info("Backbone %s: loaded %d tensors from %s", self.name, len(own), source)

    def _positional_for_grid(self, grid: Tuple[int, int]) -> Tensor:
        """(1 + h*w, D) positional embedding for a patch grid; resized on the fly (differentiably)
        when a test size differs from the size the tower was built for."""
        if grid == self.grid_size:
            return self.positional_embedding
        class_position, patches = self.positional_embedding[:1], self.positional_embedding[1:]
        patches = patches.reshape(1, *self.grid_size, self.width).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=grid, mode=self.pos_embed_interp, align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], self.width)
        return torch.cat([class_position.float(), patches], dim=0).to(self.positional_embedding.dtype)

    def forward(self, images: Tensor, camids: Optional[Tensor] = None,
                views: Optional[Tensor] = None, side_info: bool = True) -> Tuple[Tensor, Tensor]:
        """images (N, 3, H, W); camids (N,) long (needed when the camera SIE is on); views (N,) long or None
        -> tokens (N, 1+L, D) after ln_post, projected (N, 1+L, P); token 0 is the class token.

        ``side_info`` False: no SIE embedding at all, whatever camids / views say (the authors' memory
        rebuild encodes clips that way)."""
        if not side_info:
            camids = views = None
        elif self.sie_camera is not None and camids is None:
            raise ValueError("CLIPBackbone: camids are required when the camera SIE is on (MODEL.SIE_CAMERA).")
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (N, D, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (N, L, D)
        batch = x.shape[0]
        class_token = self.class_embedding.view(1, 1, -1).expand(batch, 1, -1)
        if self.sie_camera is not None and camids is not None:
            class_token = class_token + self.sie_coe * self.sie_camera[camids].unsqueeze(1)
        if self.sie_view is not None and views is not None:
            class_token = class_token + self.sie_coe * self.sie_view[views].unsqueeze(1)
        x = torch.cat([class_token.to(x.dtype), x], dim=1)
        x = x + self._positional_for_grid(grid).to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        tokens = self.ln_post(x)
        projected = tokens @ self.proj.to(tokens.dtype)
        return tokens, projected


def build_backbone(cfg, num_cameras: int, num_views: int = 2) -> CLIPBackbone:
    """The backbone of a config: MODEL.BACKBONE at INPUT.SIZE_TRAIN, MODEL.STRIDE_SIZE, SIE per
    MODEL.SIE_CAMERA / MODEL.SIE_VIEW (tables of num_cameras / num_views rows), weights per
    MODEL.PRETRAIN_PATH / MODEL.PRETRAIN_TAG."""
    model = cfg.MODEL
    return CLIPBackbone(
        name=model.BACKBONE, image_size=tuple(cfg.INPUT.SIZE_TRAIN), stride=model.STRIDE_SIZE,
        num_cameras=num_cameras if model.SIE_CAMERA else 0, num_views=num_views if model.SIE_VIEW else 0,
        sie_coe=model.SIE_COE, freeze_patch_embed=model.FREEZE_PATCH_EMBED, quick_gelu=model.QUICK_GELU,
        pretrain_path=model.PRETRAIN_PATH, pretrain_tag=model.PRETRAIN_TAG, pos_embed_interp=model.POS_EMBED_INTERP)
