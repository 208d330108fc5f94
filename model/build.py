"""Builds SASModel from a config."""
from __future__ import annotations

import logging

import torch

from model.backbone import TINY_CONFIGS, build_backbone
from model.memory import MultiProxyMemory
from model.mgtm import build_mgtm
from model.sas import SASModel
from model.weights import pretrained_weights_path

logger = logging.getLogger(__name__)

SHAPE_DIM = 10  # SMPL betas / videowise shape width


def check_weight_files(cfg) -> None:
    """Raise PretrainedWeightsError (naming the key, the file to get and where to put it) when a weight
    file named by the config does not exist.

    Call it first thing in an entry point: otherwise the missing file is noticed only when the model
    is built, after the dataset scan (minutes on the full dataset). A PRETRAIN_TAG is not resolved
    here: that may need the network.
    """
    mc = cfg.MODEL
    if mc.PRETRAIN_PATH:
        pretrained_weights_path(mc.BACKBONE, mc.PRETRAIN_PATH, builtin_tower=mc.BACKBONE in TINY_CONFIGS)
    if mc.PRSD.ENABLED:  # PRSD files are read only when PRSD is built
        from model.prsd import check_regressor_file
        from model.smpl import check_mean_params_file, check_smpl_model_file

        pretrained = mc.PRSD.LOAD_PRETRAINED  # False: the two pretrained files are not read
        for path, check in ((mc.PRSD.SMPL_MODEL_PATH, check_smpl_model_file),
                            (mc.PRSD.SMPL_MEAN_PARAMS if pretrained else "", check_mean_params_file),
                            (mc.PRSD.PRETRAINED if pretrained else "", check_regressor_file)):
            if path:
                check(path)


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


def compile_options(mode: str = "default", backend: str = "inductor", fullgraph: bool = False) -> dict:
    """torch.compile keyword arguments of MODEL.COMPILE_MODE. Static shapes (dynamic=False): the
    training step always has one shape, and a symbolic-shape graph would be slower for it."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"MODEL.COMPILE_MODE must be one of {list(COMPILE_MODES)}, got {mode!r}")
    # nn.TransformerEncoder's fused fast path (taken in fp32 eval under no_grad) fails inductor's stride
    # checks; the unfused path is what training compiles anyway.
    torch.backends.mha.set_fastpath_enabled(False)
    # The GRUs of PRSD trace only with allow_rnn (otherwise they are a graph break).
    torch._dynamo.config.allow_rnn = True
    options = dict(backend=backend, fullgraph=fullgraph, dynamic=False)
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    return options


def compile_flag(model, name: str) -> bool:
    """A flag :func:`compile_regions` sets on the model (``compiled_regions``, ``cuda_graph_steps``);
    ``model`` may be wrapped (DDP)."""
    return bool(getattr(getattr(model, "module", model), name, False))


def begin_compiled_step(model) -> None:
    """Call before every training step and every eval forward. Under MODEL.COMPILE_MODE reduce-overhead
    the CUDA graphs reuse their output memory; marking the step boundary tells them the previous
    step's outputs are no longer read (else: "accessing tensor output of CUDAGraphs that has been
    overwritten by a subsequent run"). ``model`` may be wrapped (DDP); a no-op for other modes."""
    if compile_flag(model, "cuda_graph_steps"):
        torch.compiler.cudagraph_mark_step_begin()


def compile_regions(model: SASModel, mode: str = "default", backend: str = "inductor",
                    fullgraph: bool = False, heads: bool = True) -> SASModel:
    """Regional torch.compile of ``model`` in place (parameter names and the state dict unchanged).

    Each backbone residual block is compiled on its own: all blocks run the same code, so one
    compilation serves every layer (minutes less than compiling the whole tower as one graph). The
    heads (:meth:`SASModel.heads`) and the memory update are one graph each. Eval mode compiles the
    same regions again for its shapes, so inference uses compiled blocks too. ``heads=False`` compiles
    the backbone blocks alone (a fallback for benchmarks).
    """
    options = compile_options(mode, backend, fullgraph)
    # Inference pads a short last batch to the full one for compiled models (one shape, one graph).
    model.compiled_regions = True
    # CUDA graphs replay into the same output memory: callers mark each step (begin_compiled_step).
    model.cuda_graph_steps = backend == "inductor" and mode == "reduce-overhead"
    for block in model.backbone.transformer.resblocks:
        block.compile(**options)
    if not heads:
        return model
    model.heads = torch.compile(model.heads, **options)
    if model.memory is not None:
        model.memory.update = torch.compile(model.memory.update, **options)
    return model


def build_model(cfg, num_classes: int, num_cameras: int, num_views: int = 2) -> SASModel:
    """SASModel from ``cfg.MODEL`` (backbone, MEMORY, MGTM, PRSD, EMBED_PARTS), compiled by regions
    when MODEL.COMPILE (see :func:`compile_regions`).

    num_classes: training identities; num_cameras / num_views: sizes of the SIE tables.
    The per-frame-position shape classifiers get DATALOADER.SEQ_LEN positions (the training clip length).
    """
    if num_classes < 1:
        raise ValueError(f"build_model needs at least one training identity, got num_classes={num_classes}")
    mc = cfg.MODEL
    backbone = build_backbone(cfg, num_cameras=num_cameras, num_views=num_views)
    memory = None
    if mc.MEMORY.ENABLED:
        from datasets.frame_sampling import SAMPLING_MODES

        if mc.MEMORY.REBUILD_BN not in ("batch", "running"):
            raise ValueError(f"MODEL.MEMORY.REBUILD_BN must be 'batch' or 'running', got {mc.MEMORY.REBUILD_BN!r}")
        if mc.MEMORY.REBUILD_SAMPLING not in SAMPLING_MODES:
            raise ValueError(f"MODEL.MEMORY.REBUILD_SAMPLING must be one of {list(SAMPLING_MODES)}, "
                             f"got {mc.MEMORY.REBUILD_SAMPLING!r}")
        memory = MultiProxyMemory(num_classes, backbone.width + backbone.proj_dim, num_proxies=mc.MEMORY.NUM_PROXIES,
                                  temperature=mc.MEMORY.TEMPERATURE, momentum=mc.MEMORY.MOMENTUM,
                                  update_rule=mc.MEMORY.UPDATE,
                                  # The P x K sampler puts K tracklets of an identity in a (global) batch.
                                  max_instances=int(cfg.DATALOADER.NUM_INSTANCE))
    mgtm = build_mgtm(cfg, backbone.width, backbone.grid_size) if mc.MGTM.ENABLED else None
    prsd = None
    if mc.PRSD.ENABLED:
        from model.prsd import build_prsd  # imported only when used: it pulls in smplx

        prsd = build_prsd(cfg, backbone.width)
    model = SASModel(backbone, num_classes, memory=memory, mgtm=mgtm, prsd=prsd, embed_parts=mc.EMBED_PARTS,
                     shape_positions=cfg.DATALOADER.SEQ_LEN, shape_dim=SHAPE_DIM,
                     framewise_bnneck=mc.PRSD.FRAMEWISE_BNNECK)
    if mc.COMPILE:
        compile_regions(model, mc.COMPILE_MODE)
    logger.info("SASModel: backbone %s, memory %s, MGTM %s, PRSD %s, embedding %s = %d-d%s",
                mc.BACKBONE, "on" if memory is not None else "off", "on" if mgtm is not None else "off",
                "on" if prsd is not None else "off", "+".join(model.embed_parts), model.embedding_dim,
                f", compiled by regions ({mc.COMPILE_MODE})" if mc.COMPILE else "")
    return model
