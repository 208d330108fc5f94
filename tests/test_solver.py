"""solver/: optimizer parameter groups and LR schedules, and the authors' learning rates on the SAS model (the
encoder's biases at the backbone LR, x2 for the temporal and frame classifiers only, every bias at x2 by
default, GRU biases included), each behind a key that restores the earlier choice."""
import pytest
import torch
from torch import nn

from configs import load_config
from solver.optimizer import build_optimizer, parameter_groups
from solver.scheduler import build_scheduler, lr_factor
from tests.helpers.models import make_tiny_sas


class TinyModel(nn.Module):
    head_classifier_prefixes = ("mgtm_classifier.",)

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.backbone.sie_camera = nn.Parameter(torch.zeros(3, 4))
        self.backbone_frozen = nn.Linear(4, 4)
        self.neck = nn.Linear(4, 4)
        self.mgtm_classifier = nn.Linear(4, 3, bias=False)
        self.backbone_frozen.requires_grad_(False)


def group_of(groups, name):
    return next(g for g in groups if name in g["names"])


def test_parameter_groups_rates_and_frozen():
    model = TinyModel()
    model.backbone.weight.requires_grad_(True)
    groups = parameter_groups(model, base_lr=1.0, backbone_lr=0.01, bias_lr_factor=2.0, head_lr_factor=3.0,
                              weight_decay=0.1, weight_decay_bias=0.0, head_prefixes=model.head_classifier_prefixes,
                              new_backbone_names=("sie_camera",))
    names = [n for g in groups for n in g["names"]]
    assert "backbone_frozen.weight" not in names and "backbone_frozen.bias" not in names
    assert group_of(groups, "backbone.weight")["lr"] == pytest.approx(0.01)
    assert group_of(groups, "backbone.bias")["lr"] == pytest.approx(0.01)  # encoder biases: the backbone LR
    assert group_of(groups, "neck.bias")["lr"] == pytest.approx(2.0)  # other biases x bias_lr_factor
    assert group_of(groups, "backbone.bias")["weight_decay"] == 0.0
    assert group_of(groups, "neck.weight")["lr"] == pytest.approx(1.0)
    assert group_of(groups, "backbone.sie_camera")["lr"] == pytest.approx(1.0)  # new, not pretrained
    assert group_of(groups, "neck.weight")["weight_decay"] == 0.1
    assert group_of(groups, "mgtm_classifier.weight")["lr"] == pytest.approx(3.0)
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    groups = parameter_groups(model, base_lr=1.0, backbone_lr=0.01, bias_lr_factor=2.0, head_lr_factor=3.0,
                              weight_decay=0.1, weight_decay_bias=0.0, backbone_bias_lr_factor=2.0)
    assert group_of(groups, "backbone.bias")["lr"] == pytest.approx(0.02)


@pytest.mark.parametrize("name, cls", [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW), ("SGD", torch.optim.SGD)])
def test_build_optimizer_kinds(name, cls):
    cfg = load_config(None, ["SOLVER.OPTIMIZER", name])
    assert isinstance(build_optimizer(cfg, TinyModel()), cls)


def test_bad_optimizer_name():
    cfg = load_config(None, ["SOLVER.OPTIMIZER", "Lion"])
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(cfg, TinyModel())


def test_paper_multistep_schedule():
    # Warmup from 0.1 over 10 epochs, then x0.1 at epochs 10, 20, 30 (0-based epoch index).
    f = [lr_factor(e, "multistep", 40, 10, 0.1, (10, 20, 30), 0.1) for e in range(40)]
    assert f[0] == pytest.approx(0.1)
    assert f[5] == pytest.approx(0.1 * 0.5 + 0.5)
    assert f[10] == pytest.approx(0.1) and f[19] == pytest.approx(0.1)
    assert f[20] == pytest.approx(0.01) and f[39] == pytest.approx(0.001)


def test_cosine_schedule_ends_at_final_factor():
    f = [lr_factor(e, "cosine", 20, 2, 0.1, cosine_final_factor=0.01) for e in range(20)]
    assert f[2] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))


def test_scheduler_steps_per_epoch():
    cfg = load_config(None, ["SOLVER.WARMUP_EPOCHS", "2", "SOLVER.STEPS", "[3]", "SOLVER.BASE_LR", "1.0",
                             "SOLVER.BACKBONE_LR", "1.0", "SOLVER.BIAS_LR_FACTOR", "1.0", "SOLVER.HEAD_LR_FACTOR", "1.0"])
    opt = build_optimizer(cfg, TinyModel())
    sched = build_scheduler(cfg, opt)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1, 0.55, 1.0, 0.1, 0.1])


def lr_of(optimizer, name):
    return next(g["lr"] for g in optimizer.param_groups if name in g["names"])


def test_default_parameter_group_lrs_follow_the_authors():
    cfg, model = make_tiny_sas()
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
    cfg, model = make_tiny_sas("SOLVER.BACKBONE_BIAS_LR_FACTOR", "2.0",
                               "SOLVER.HEAD_LR_CLASSIFIERS", "['tp', 'frame', 'shape', 'framewise_shape']")
    opt = build_optimizer(cfg, model)
    base, backbone = cfg.SOLVER.BASE_LR, cfg.SOLVER.BACKBONE_LR
    assert lr_of(opt, "backbone.ln_post.bias") == pytest.approx(2 * backbone)
    assert lr_of(opt, "backbone.ln_post.weight") == pytest.approx(backbone)
    for name in ("classifier_tp.weight", "classifier_frame.weight", "classifier_shape.weight",
                 "classifier_framewise_shape.weight"):
        assert lr_of(opt, name) == pytest.approx(2 * base), name


def test_unknown_head_lr_classifier_is_an_error_naming_the_key():
    cfg, model = make_tiny_sas("SOLVER.HEAD_LR_CLASSIFIERS", "['tp', 'temporal']")
    with pytest.raises(ValueError, match="SOLVER.HEAD_LR_CLASSIFIERS.*temporal"):
        build_optimizer(cfg, model)


def test_gru_biases_train_at_the_bias_factor():
    cfg, model = make_tiny_sas()
    assert cfg.SOLVER.BIAS_NAME_MATCH == "substring"
    base = cfg.SOLVER.BASE_LR
    opt = build_optimizer(cfg, model)
    assert lr_of(opt, "prsd.encoder.gru.bias_ih_l0") == pytest.approx(base * cfg.SOLVER.BIAS_LR_FACTOR)
    assert lr_of(opt, "prsd.encoder.gru.weight_ih_l0") == pytest.approx(base)
    cfg, model = make_tiny_sas("SOLVER.BIAS_NAME_MATCH", "suffix")
    assert lr_of(build_optimizer(cfg, model), "prsd.encoder.gru.bias_ih_l0") == pytest.approx(base)
