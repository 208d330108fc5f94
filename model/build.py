"""Builds SASModel from a config."""
from __future__ import annotations

import logging

from model.backbone import build_backbone
from model.memory import MultiProxyMemory
from model.mgtm import build_mgtm
from model.sas import SASModel

logger = logging.getLogger(__name__)

SHAPE_DIM = 10  # SMPL betas / videowise shape width


def check_weight_files(cfg) -> None:
    """Raise PretrainedWeightsError (naming the key, the file to get and where to put it) when a weight
    file named by the config does not exist.

    Call it first thing in an entry point: otherwise the missing file is noticed only when the model
    is built, after the dataset scan (minutes on the full dataset). A PRETRAIN_TAG is not resolved
    here: that may need the network.
    """
    from model.backbone import pretrained_weights_path

    mc = cfg.MODEL
    if mc.PRETRAIN_PATH:
        pretrained_weights_path(mc.BACKBONE, mc.PRETRAIN_PATH)
    if mc.PRSD.ENABLED:  # PRSD files are read only when PRSD is built
        from model.prsd import check_regressor_file
        from model.smpl import check_mean_params_file, check_smpl_model_file

        for path, check in ((mc.PRSD.SMPL_MODEL_PATH, check_smpl_model_file),
                            (mc.PRSD.SMPL_MEAN_PARAMS, check_mean_params_file),
                            (mc.PRSD.PRETRAINED, check_regressor_file)):
            if path:
                check(path)


def build_model(cfg, num_classes: int, num_cameras: int, num_views: int = 2) -> SASModel:
    """SASModel from ``cfg.MODEL`` (backbone, MEMORY, MGTM, PRSD, EMBED_PARTS).

    num_classes: training identities; num_cameras / num_views: sizes of the SIE tables.
    The per-frame-position shape classifiers get DATALOADER.SEQ_LEN positions (the training clip length).
    """
    if num_classes < 1:
        raise ValueError(f"build_model needs at least one training identity, got num_classes={num_classes}")
    mc = cfg.MODEL
    backbone = build_backbone(cfg, num_cameras=num_cameras, num_views=num_views)
    memory = None
    if mc.MEMORY.ENABLED:
        memory = MultiProxyMemory(num_classes, backbone.width + backbone.proj_dim, num_proxies=mc.MEMORY.NUM_PROXIES,
                                  temperature=mc.MEMORY.TEMPERATURE, momentum=mc.MEMORY.MOMENTUM)
    mgtm = build_mgtm(cfg, backbone.width, backbone.grid_size) if mc.MGTM.ENABLED else None
    prsd = None
    if mc.PRSD.ENABLED:
        from model.prsd import build_prsd  # imported only when used: it pulls in smplx

        prsd = build_prsd(cfg, backbone.width)
    model = SASModel(backbone, num_classes, memory=memory, mgtm=mgtm, prsd=prsd, embed_parts=mc.EMBED_PARTS,
                     shape_positions=cfg.DATALOADER.SEQ_LEN, shape_dim=SHAPE_DIM)
    logger.info("SASModel: backbone %s, memory %s, MGTM %s, PRSD %s, embedding %s = %d-d",
                mc.BACKBONE, "on" if memory is not None else "off", "on" if mgtm is not None else "off",
                "on" if prsd is not None else "off", "+".join(model.embed_parts), model.embedding_dim)
    return model
