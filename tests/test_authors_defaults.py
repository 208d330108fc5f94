"""The authors' training details as defaults, each behind a config key (issue 9 point 4):
PRSD gets detached backbone tokens; the encoder's biases train at the backbone LR; the x2 head LR
covers the temporal (MGTM) and frame classifiers only; the regressor starts from the prior mean shape."""
import pytest
import torch

from configs import load_config
from loss.build import build_loss
from model.build import build_model
from model.prsd import build_prsd
from solver.optimizer import build_optimizer
from tests.test_sas_model import NUM_CAMERAS, NUM_CLASSES, TINY, clips

PRIOR_MEAN = [0.2056, 0.3356, -0.3507, 0.3561, 0.4175, 0.0309, 0.3048, 0.2361, 0.2091, 0.3121]


def tiny(*opts):
    torch.manual_seed(0)
    cfg = load_config(None, TINY + list(opts))
    return cfg, build_model(cfg, NUM_CLASSES, NUM_CAMERAS)


def shape_loss_only(*opts):
    """The model after backpropagating the shape losses alone (every other loss weight 0)."""
    cfg, model = tiny("LOSS.MEMORY_WEIGHT", "0", "LOSS.FRAME_ID_WEIGHT", "0", *opts)
    model.train()
    frames, camids, views, labels = clips(4)
    out = model(frames, camids, views, labels)
    # Only the shape branch's outputs go into the loss: shape ID, shape triplet, framewise ID, prior.
    shape_out = {"id_logits": {"shape": out["id_logits"]["shape"]},
                 "triplet_feats": {"shape": out["triplet_feats"]["shape"]},
                 "framewise_shape_logits": out["framewise_shape_logits"], "betas": out["betas"]}
    total, _ = build_loss(cfg, NUM_CLASSES)(shape_out, labels)
    assert total.item() > 0
    total.backward()
    return model


def backbone_grad_norm(model) -> float:
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.") and p.grad is not None]
    return float(sum(g.abs().sum() for g in grads)) if grads else 0.0


def test_detach_input_default_keeps_shape_losses_out_of_the_encoder():
    model = shape_loss_only()
    assert backbone_grad_norm(model) == 0.0
    assert model.prsd.input_proj.weight.grad.abs().sum() > 0  # the branch itself trains


def test_detach_input_false_sends_shape_losses_into_the_encoder():
    model = shape_loss_only("MODEL.PRSD.DETACH_INPUT", "False")
    assert backbone_grad_norm(model) > 0
    assert model.backbone.get_parameter("ln_post.weight").grad.abs().sum() > 0


def lr_of(optimizer, name):
    return next(g["lr"] for g in optimizer.param_groups if name in g["names"])


def test_default_parameter_group_lrs_follow_the_authors():
    cfg, model = tiny()
    opt = build_optimizer(cfg, model)
    base, backbone = cfg.SOLVER.BASE_LR, cfg.SOLVER.BACKBONE_LR
    named = dict(model.named_parameters())
    encoder_biases = [n for n, p in named.items() if n.startswith("backbone.") and n.endswith("bias") and p.requires_grad]
    assert encoder_biases
    for name in encoder_biases:  # the encoder's biases at the backbone LR, not x BIAS_LR_FACTOR
        assert lr_of(opt, name) == pytest.approx(backbone), name
    assert lr_of(opt, "backbone.ln_post.weight") == pytest.approx(backbone)
    for name in ("classifier_tp.weight", "classifier_frame.weight"):  # temporal and frame classifiers x2
        assert lr_of(opt, name) == pytest.approx(2 * base), name
    for name in ("classifier_shape.weight", "classifier_framewise_shape.weight", "classifier_appearance.weight",
                 "mgtm.fusion_logits", "prsd.input_proj.weight"):  # shape classifiers and other heads: base LR
        assert lr_of(opt, name) == pytest.approx(base), name
    head_biases = [n for n, p in named.items() if not n.startswith("backbone.") and n.endswith("bias") and p.requires_grad]
    assert head_biases
    for name in head_biases:  # biases outside the encoder keep BIAS_LR_FACTOR
        assert lr_of(opt, name) == pytest.approx(base * cfg.SOLVER.BIAS_LR_FACTOR), name


def test_keys_restore_the_other_choices():
    cfg, model = tiny("SOLVER.BACKBONE_BIAS_LR_FACTOR", "2.0",
                      "SOLVER.HEAD_LR_CLASSIFIERS", "['tp', 'frame', 'shape', 'framewise_shape']")
    opt = build_optimizer(cfg, model)
    base, backbone = cfg.SOLVER.BASE_LR, cfg.SOLVER.BACKBONE_LR
    assert lr_of(opt, "backbone.ln_post.bias") == pytest.approx(2 * backbone)
    assert lr_of(opt, "backbone.ln_post.weight") == pytest.approx(backbone)
    for name in ("classifier_tp.weight", "classifier_frame.weight", "classifier_shape.weight",
                 "classifier_framewise_shape.weight"):
        assert lr_of(opt, name) == pytest.approx(2 * base), name


def test_unknown_head_lr_classifier_is_an_error_naming_the_key():
    cfg, model = tiny("SOLVER.HEAD_LR_CLASSIFIERS", "['tp', 'temporal']")
    with pytest.raises(ValueError, match="SOLVER.HEAD_LR_CLASSIFIERS.*temporal"):
        build_optimizer(cfg, model)


SMALL_PRSD = ["MODEL.PRSD.FEAT_DIM", "32", "MODEL.PRSD.HIDDEN_DIM", "32", "MODEL.PRSD.AGG_LAYERS", "1",
              "MODEL.PRSD.AGG_HEADS", "4", "MODEL.PRSD.AGG_FFN_DIM", "64"]


def test_regressor_starts_from_the_prior_mean_shape_without_a_mean_params_file():
    cfg = load_config(None, SMALL_PRSD)
    model = build_prsd(cfg, in_dim=16).eval()
    torch.testing.assert_close(model.regressor.init_shape[0], torch.tensor(PRIOR_MEAN))
    with torch.no_grad():  # with the updates switched off, every frame's betas are the starting betas
        model.regressor.decshape.weight.zero_()
        model.regressor.decshape.bias.zero_()
        betas = model(torch.randn(2, 3, 5, 16))["betas"]
    torch.testing.assert_close(betas, torch.tensor(PRIOR_MEAN).expand(2, 3, 10))


def test_init_betas_zero_and_a_bad_value():
    model = build_prsd(load_config(None, SMALL_PRSD + ["MODEL.PRSD.INIT_BETAS", "zero"]), in_dim=16)
    assert torch.equal(model.regressor.init_shape, torch.zeros(1, 10))
    with pytest.raises(ValueError, match="MODEL.PRSD.INIT_BETAS"):
        build_prsd(load_config(None, SMALL_PRSD + ["MODEL.PRSD.INIT_BETAS", "mean"]), in_dim=16)
