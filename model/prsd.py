"""PRSD: prior-regularised shape dynamics (the body-shape branch of SAS-VPReID).

Per frame, the backbone tokens are averaged and projected to a feature; a VIBE-style temporal
encoder (GRU + residual) adds context from neighbouring frames; a SPIN/HMR-style iterative
regressor refines SMPL parameters (6D pose, betas, weak-perspective camera) from the mean
parameters. An aggregator turns the regressor's per-frame hidden state into a framewise shape
code and, through a GRU over time and a transformer encoder, into one videowise shape code.

As the authors, the backbone tokens are detached on the way in (``MODEL.PRSD.DETACH_INPUT``, the
counterpart of ``MODEL.MGTM.DETACH_INPUT`` for the temporal branch): the shape losses train this
branch, not the CLIP encoder; and the regressor starts from the prior mean
shape when no SMPL mean-parameter file is given (``MODEL.PRSD.INIT_BETAS``).
Differences from the authors' code (see method.md): outputs are not detached (so the shape model
trains and the prior loss has a gradient) unless ``MODEL.PRSD.DETACH_OUTPUT``; the aggregator's
recurrence runs over time (batch_first), never across the clips of a batch; all frames of all
clips go through the regressor in one batched pass. Under torch.compile both GRUs are one opaque op
each (model.rnn.run_gru) instead of their unrolled time steps.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.weights import PretrainedWeightsError
from model.rnn import run_gru
from model.smpl import (CAM_DIM, NUM_BETAS, NUM_SMPL_JOINTS, POSE_6D_DIM, SMPLDecoder, build_smpl_decoder,
                        default_mean_params, load_mean_params, rot6d_to_rotmat)

logger = logging.getLogger(__name__)


class TemporalEncoder(nn.Module):
    """VIBE-style temporal encoder: 2-layer GRU -> ReLU -> Linear back to the input width, residual.

    Parameter names (``gru``, ``linear``) match VIBE/TSM ``gen_state_dict`` checkpoints.
    """

    def __init__(self, feat_dim: int, hidden_dim: int, num_layers: int = 2):
        super().__init__()
        self.gru = nn.GRU(feat_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_dim, feat_dim)

    def forward(self, features: Tensor) -> Tensor:
        """features (B, T, F) -> (B, T, F); the recurrence runs over T within each clip."""
        recurrent = run_gru(self.gru, features)
        return features + self.linear(F.relu(recurrent))


class IterativeRegressor(nn.Module):
    """SPIN/HMR iterative error feedback: ``[feature; pose6d; betas; cam] -> fc1 -> fc2 -> residual
    updates`` repeated ``iterations`` times from the SMPL mean parameters.

    As in SPIN there is no activation between fc1 and fc2 (kept so that SPIN/VIBE weights mean the
    same thing here); the non-linearity comes from the temporal encoder. Names (fc1, fc2, decpose,
    decshape, deccam, init_pose, init_shape, init_cam) match SPIN and VIBE checkpoints.
    """

    def __init__(self, feat_dim: int, hidden_dim: int, iterations: int, mean_params: Mapping[str, Tensor],
                 dropout: float = 0.0):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"MODEL.PRSD.ITERATIONS must be >= 1, got {iterations}.")
        self.iterations = int(iterations)
        self.fc1 = nn.Linear(feat_dim + POSE_6D_DIM + NUM_BETAS + CAM_DIM, hidden_dim)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.drop2 = nn.Dropout(dropout)
        self.decpose = nn.Linear(hidden_dim, POSE_6D_DIM)
        self.decshape = nn.Linear(hidden_dim, NUM_BETAS)
        self.deccam = nn.Linear(hidden_dim, CAM_DIM)
        for decoder in (self.decpose, self.decshape, self.deccam):
            # small first updates: the regressor starts at the mean parameters
            nn.init.xavier_uniform_(decoder.weight, gain=0.01)
        self.register_buffer("init_pose", mean_params["pose"].reshape(1, POSE_6D_DIM).float().clone())
        self.register_buffer("init_shape", mean_params["shape"].reshape(1, NUM_BETAS).float().clone())
        self.register_buffer("init_cam", mean_params["cam"].reshape(1, CAM_DIM).float().clone())

    def forward(self, features: Tensor) -> Dict[str, Tensor]:
        """features (N, F) -> pose6d (N, 144), betas (N, 10), cam (N, 3), hidden (N, H) (last iteration).

        The same function as SPIN's loop (``fc1`` of ``[feature; pose; betas; cam]``, three decoders),
        in fewer kernels: fc1's feature half is the same in every iteration, so it is computed once,
        and the three decoders run as one matmul over the stacked parameter vector (N, 157).
        """
        count, feat_dim = features.shape
        feature_term = F.linear(features, self.fc1.weight[:, :feat_dim], self.fc1.bias)  # (N, H)
        param_weight = self.fc1.weight[:, feat_dim:]                                      # (H, 157)
        decoders = (self.decpose, self.decshape, self.deccam)
        dec_weight = torch.cat([decoder.weight for decoder in decoders])                  # (157, H)
        dec_bias = torch.cat([decoder.bias for decoder in decoders])
        params = torch.cat([self.init_pose, self.init_shape, self.init_cam], 1).expand(count, -1)  # (N, 157)
        hidden = features.new_zeros(0)
        for _ in range(self.iterations):  # a loop over refinement steps, not over samples
            state = feature_term + F.linear(params.to(features.dtype), param_weight)
            hidden = self.drop2(self.fc2(self.drop1(state)))
            params = params + F.linear(hidden, dec_weight, dec_bias)
        pose, betas, cam = params.split([POSE_6D_DIM, NUM_BETAS, CAM_DIM], dim=1)
        return dict(pose6d=pose, betas=betas, cam=cam, hidden=hidden)


class ShapeAggregator(nn.Module):
    """ASA: per-frame hidden -> framewise shape (10); GRU over time -> transformer encoder -> mean over
    time -> videowise shape (10). Optional extra per-frame cues (bone lengths) join the GRU input."""

    def __init__(self, hidden_dim: int, layers: int, heads: int, ffn_dim: int, dropout: float = 0.0,
                 extra_dim: int = 0):
        super().__init__()
        if hidden_dim % heads:
            raise ValueError(f"MODEL.PRSD.HIDDEN_DIM={hidden_dim} must be divisible by MODEL.PRSD.AGG_HEADS={heads}.")
        self.framewise = nn.Linear(hidden_dim, NUM_BETAS)
        self.gru = nn.GRU(NUM_BETAS + extra_dim, hidden_dim, num_layers=2, batch_first=True)
        layer = nn.TransformerEncoderLayer(hidden_dim, heads, dim_feedforward=ffn_dim, dropout=dropout,
                                           batch_first=True)
        # no nested-tensor fast path: inputs are never padded, and it warns for some layer settings
        self.transformer = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.videowise = nn.Linear(hidden_dim, NUM_BETAS)

    def forward(self, hidden: Tensor, extra: Optional[Tensor] = None):
        """hidden (B, T, H), extra (B, T, E) or None -> framewise (B, T, 10), videowise (B, 10)."""
        framewise = self.framewise(hidden)
        sequence = framewise if extra is None else torch.cat([framewise, extra.to(framewise.dtype)], dim=-1)
        recurrent = run_gru(self.gru, sequence)  # batch_first: the recurrence is over each clip's frames
        encoded = self.transformer(recurrent)
        return framewise, self.videowise(encoded.mean(dim=1))


class PRSD(nn.Module):
    """The PRSD shape branch (see module docstring)."""

    def __init__(self, in_dim: int, feat_dim: int = 2048, hidden_dim: int = 1024, iterations: int = 3,
                 agg_layers: int = 4, agg_heads: int = 8, agg_ffn_dim: int = 4096, dropout: float = 0.0,
                 agg_dropout: Optional[float] = None, detach_output: bool = False, detach_input: bool = True, mean_params: Optional[Mapping[str, Tensor]] = None,
                 smpl: Optional[SMPLDecoder] = None, use_bone_lengths: bool = False):
        super().__init__()
        if use_bone_lengths and smpl is None:
            raise ValueError("MODEL.PRSD.USE_BONE_LENGTHS needs an SMPL model: set MODEL.PRSD.SMPL_MODEL_PATH.")
        self.hidden_dim = hidden_dim
        self.detach_output = detach_output
        self.detach_input = detach_input
        self.use_bone_lengths = use_bone_lengths
        self.input_proj = nn.Linear(in_dim, feat_dim)
        self.encoder = TemporalEncoder(feat_dim, hidden_dim)
        self.regressor = IterativeRegressor(feat_dim, hidden_dim, iterations, mean_params or default_mean_params(),
                                            dropout)
        self.smpl = smpl
        extra_dim = smpl.num_bones if use_bone_lengths else 0
        # dropout: the regressor's; agg_dropout: the aggregator's (None: the same).
        self.aggregator = ShapeAggregator(hidden_dim, agg_layers, agg_heads, agg_ffn_dim,
                                          dropout if agg_dropout is None else agg_dropout, extra_dim)

    def forward(self, tokens: Tensor) -> Dict[str, Tensor]:
        """tokens (B, T, 1+L, D) -> dict(
            betas (B, T, 10), framewise_shape (B, T, 10), videowise_shape (B, 10), frame_hidden (B, T, H),
            pose6d (B, T, 144), cam (B, T, 3), [joints (B, T, 29, 3) when SMPL is set],
            [bone_lengths (B, T, 23) when MODEL.PRSD.USE_BONE_LENGTHS])."""
        if tokens.dim() != 4:
            raise ValueError(f"PRSD expects backbone tokens (B, T, 1+L, D), got shape {tuple(tokens.shape)}.")
        batch, frames = tokens.shape[:2]
        if self.detach_input:  # as the authors: the shape losses do not reach the backbone
            tokens = tokens.detach()
        features = self.input_proj(tokens.mean(dim=2))  # (B, T, F)
        features = self.encoder(features)
        regressed = self.regressor(features.reshape(batch * frames, -1))  # every frame of every clip at once
        out = {name: value.reshape(batch, frames, *value.shape[1:]) for name, value in regressed.items()}
        out["frame_hidden"] = out.pop("hidden")
        extra = None
        if self.smpl is not None:
            rotmats = rot6d_to_rotmat(regressed["pose6d"].reshape(-1, NUM_SMPL_JOINTS, 6))
            joints = self.smpl(regressed["betas"], rotmats)  # (B*T, J, 3)
            out["joints"] = joints.reshape(batch, frames, *joints.shape[1:])
            if self.use_bone_lengths:
                out["bone_lengths"] = self.smpl.bone_lengths(out["joints"])
                extra = out["bone_lengths"]
        if self.detach_output:  # reproduces the authors' code: the shape model gets no gradient
            out = {name: value.detach() for name, value in out.items()}
            extra = out.get("bone_lengths") if self.use_bone_lengths else None
        framewise, videowise = self.aggregator(out["frame_hidden"], extra)
        out["framewise_shape"] = framewise
        out["videowise_shape"] = videowise
        return out


# ----------------------------------------------------------------------------- pretrained regressors
_REGRESSOR_NAMES = ("fc1.", "fc2.", "decpose.", "decshape.", "deccam.", "init_pose", "init_shape", "init_cam")


def map_regressor_checkpoint(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a SPIN (``model``: HMR with bare ``fc1`` / ``decpose`` / ``init_pose`` ...) or VIBE/TSM
    (``gen_state_dict``: ``encoder.gru`` / ``encoder.linear`` / ``regressor.*``) state dict to PRSD
    names (``encoder.*``, ``regressor.*``). Keys with no PRSD counterpart keep their name (they are
    reported as unexpected)."""
    mapped: Dict[str, Tensor] = {}
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith(_REGRESSOR_NAMES):
            name = "regressor." + name
        mapped[name] = value
    return mapped


def check_regressor_file(path: str) -> None:
    """PretrainedWeightsError (what to get, where to put it) when MODEL.PRSD.PRETRAINED is missing."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(
            f"MODEL.PRSD.PRETRAINED={path!r} does not exist. Get a SPIN checkpoint (key 'model'; SPIN's "
            "http://visiondata.cis.upenn.edu/spin/model_checkpoint.pt) or a VIBE/TSM one (key 'gen_state_dict') "
            f"and put it at {os.path.abspath(path)}; or leave the key empty, or set MODEL.PRSD.LOAD_PRETRAINED False, "
            "to start the shape branch from random weights.")


def load_pretrained_regressor(model: PRSD, path: str) -> Dict[str, list]:
    """Load the temporal encoder / regressor of a SPIN or VIBE/TSM checkpoint into ``model``.

    Returns and logs a report: matched, missing (PRSD encoder/regressor tensors the file lacks),
    unexpected (file tensors with no PRSD counterpart, e.g. the ResNet or SMPL buffers) and
    shape_mismatch (left at their current values).
    """
    check_regressor_file(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = None
    if isinstance(checkpoint, Mapping):
        for key in ("gen_state_dict", "model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                state = checkpoint[key]
                break
        if state is None and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
            state = checkpoint
    if state is None:
        keys = list(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path}: no regressor state dict found (expected key 'gen_state_dict' or 'model'; found {keys}).")
    mapped = map_regressor_checkpoint({k: v for k, v in state.items() if isinstance(v, Tensor)})
    own = {k: v for k, v in model.state_dict().items() if k.startswith(("encoder.", "regressor."))}
    matched, mismatched = [], []
    for key, value in mapped.items():
        if key in own:
            if value.shape == own[key].shape:
                matched.append(key)
            else:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    report = dict(matched=sorted(matched), missing=sorted(set(own) - set(mapped)),
                  unexpected=sorted(set(mapped) - set(own)), shape_mismatch=mismatched)
    model.load_state_dict({k: mapped[k].to(own[k].dtype) for k in matched}, strict=False)
    logger.info("PRSD pretrained %s: %d matched, %d missing %s, %d unexpected %s, %d shape mismatch %s", path,
                len(report["matched"]), len(report["missing"]), report["missing"][:6], len(report["unexpected"]),
                report["unexpected"][:6], len(mismatched), mismatched[:4])
    if not matched:
        logger.warning("PRSD pretrained %s: no tensor matched; the regressor stays randomly initialised.", path)
    return report


INIT_BETAS_MODES = ("prior", "zero")


def initial_mean_params(cfg) -> Dict[str, Tensor]:
    """The regressor's starting SMPL parameters: the MODEL.PRSD.SMPL_MEAN_PARAMS file when given; else
    the built-in pose and camera with betas = LOSS.SHAPE_PRIOR_MEAN ("prior", as SPIN-style regressors
    start from the mean shape) or zeros ("zero"), per MODEL.PRSD.INIT_BETAS."""
    p = cfg.MODEL.PRSD
    if p.SMPL_MEAN_PARAMS and p.LOAD_PRETRAINED:
        return load_mean_params(p.SMPL_MEAN_PARAMS)
    mode = str(p.INIT_BETAS)
    if mode not in INIT_BETAS_MODES:
        raise ValueError(f"MODEL.PRSD.INIT_BETAS must be one of {list(INIT_BETAS_MODES)}, got {mode!r}")
    mean_params = default_mean_params()
    if mode == "prior":
        prior = torch.tensor([float(v) for v in cfg.LOSS.SHAPE_PRIOR_MEAN], dtype=torch.float32)
        if prior.numel() != NUM_BETAS:
            raise ValueError(f"LOSS.SHAPE_PRIOR_MEAN must have {NUM_BETAS} values to start the regressor from it "
                             f"(MODEL.PRSD.INIT_BETAS prior), got {prior.numel()}")
        mean_params["shape"] = prior
    return mean_params


def build_prsd(cfg, in_dim: int) -> PRSD:
    """PRSD of a config (MODEL.PRSD.*), for backbone tokens of width ``in_dim``."""
    p = cfg.MODEL.PRSD
    model = PRSD(in_dim, feat_dim=p.FEAT_DIM, hidden_dim=p.HIDDEN_DIM, iterations=p.ITERATIONS,
                 agg_layers=p.AGG_LAYERS, agg_heads=p.AGG_HEADS, agg_ffn_dim=p.AGG_FFN_DIM, dropout=p.REGRESSOR_DROPOUT,
                 agg_dropout=p.AGG_DROPOUT,
                 detach_output=p.DETACH_OUTPUT, detach_input=cfg.MODEL.PRSD.DETACH_INPUT, mean_params=initial_mean_params(cfg),
                 smpl=build_smpl_decoder(p.SMPL_MODEL_PATH), use_bone_lengths=p.USE_BONE_LENGTHS)
    if p.PRETRAINED and p.LOAD_PRETRAINED:
        load_pretrained_regressor(model, p.PRETRAINED)
    return model
