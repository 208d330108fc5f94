"""The assembled SAS model (model/sas.py): paper embedding widths, train/eval outputs per the contract, batch
independence, determinism, config switches, no Python loop over the batch, and the authors' defaults: the
shape losses stay out of the encoder (MODEL.PRSD.DETACH_INPUT), framewise shape classifiers with a bias and
no BNNeck."""
import collections
import glob
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from configs import load_config
from loss.build import build_loss
from model.build import build_model
from solver.optimizer import HEAD_CLASSIFIER_NAMES, head_lr_prefixes
from tests.helpers.models import NUM_CAMERAS, NUM_CLASSES, TINY_SAS, make_clips, make_tiny_sas
from tests.helpers.paths import REPO_ROOT


@pytest.mark.slow
def test_paper_backbones_build_with_the_paper_embedding_widths():
    for backbone, size, width in (("ViT-B-16", "[256,128]", 2058), ("ViT-L-14", "[252,126]", 2826)):
        cfg = load_config(None, ["MODEL.BACKBONE", backbone, "MODEL.PRETRAIN_PATH", "", "MODEL.PRETRAIN_TAG", "",
                                 "INPUT.SIZE_TRAIN", size, "INPUT.SIZE_TEST", size])
        model = build_model(cfg, num_classes=10, num_cameras=3)
        assert model.embedding_dim == width, backbone
        del model


def test_train_outputs_follow_the_contract_and_the_loss_backpropagates():
    cfg, model = make_tiny_sas()
    model.train()
    frames, camids, views, labels = make_clips(4)
    out = model(frames, camids, views, labels)
    b, t, c = 4, 4, NUM_CLASSES
    assert set(out["id_logits"]) == {"appearance", "tp", "shape"}
    assert all(v.shape == (b, c) for v in out["id_logits"].values())
    widths = {"cls": 64, "proj": 32, "tp": 64, "shape": 10}
    assert {k: v.shape for k, v in out["triplet_feats"].items()} == {k: (b, w) for k, w in widths.items()}
    assert out["frame_logits"].shape == (b, t, c) and out["framewise_shape_logits"].shape == (b, t, c)
    assert out["betas"].shape == (b, t, 10)
    assert out["memory_feat"].shape == (b, 96) and out["memory_logits"].shape == (b, 2, c)
    torch.testing.assert_close(out["memory_feat"].norm(dim=1), torch.ones(b))
    total, terms = build_loss(cfg, NUM_CLASSES)(out, labels)
    total.backward()
    assert len(terms) == 11
    for name in ("classifier_appearance.weight", "classifier_tp.weight", "classifier_frame.weight",
                 "classifier_shape.weight", "classifier_framewise_shape.weight", "mgtm.fusion_logits",
                 "backbone.ln_post.weight"):
        assert model.get_parameter(name).grad is not None, name


def test_bnnecks_classifiers_and_head_prefixes():
    _, model = make_tiny_sas()
    norms = [m for n, m in model.named_modules() if n.startswith("bottleneck_")]
    # cls, proj, tp, frame, shape; the framewise shape classifiers have none (MODEL.PRSD.FRAMEWISE_BNNECK False)
    assert len(norms) == 5 and all(not m.bias.requires_grad for m in norms)
    names = [n for n, _ in model.named_parameters()]
    # every classifier SOLVER.HEAD_LR_CLASSIFIERS may name exists in the full model
    for prefix in head_lr_prefixes(HEAD_CLASSIFIER_NAMES):
        assert any(n.startswith(prefix) for n in names), prefix
    # bias-free classifiers behind BNNecks; the framewise shape ones have a bias as the authors'
    assert [n for n in names if n.startswith("classifier_") and n.endswith("bias")] == ["classifier_framewise_shape.bias"]
    assert model.classifier_appearance.weight.std() < 0.002
    assert "memory.proxies" in model.state_dict()


def test_eval_embedding_is_independent_of_batch_mates_and_deterministic():
    _, model = make_tiny_sas()
    model.eval()
    frames, camids, views, _ = make_clips(4, frames=6, seed=1)     # a test clip length unlike training
    with torch.no_grad():
        together = model(frames, camids, views)
        alone = model(frames[1:2], camids[1:2], views[1:2])
        again = model(frames, camids, views)
    assert together["embedding"].shape == (4, model.embedding_dim) == (4, 64 + 32 + 64 + 10)
    assert together["memory_feat"].shape == (4, 96)
    torch.testing.assert_close(alone["embedding"], together["embedding"][1:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone["memory_feat"], together["memory_feat"][1:2], rtol=1e-4, atol=1e-5)
    assert torch.equal(together["embedding"], again["embedding"])


@pytest.mark.parametrize("opts,width,absent", [
    (["MODEL.EMBED_PARTS", "[cls,proj]", "MODEL.MGTM.ENABLED", "False", "MODEL.PRSD.ENABLED", "False",
      "MODEL.MEMORY.ENABLED", "False"], 96, {"frame_logits", "framewise_shape_logits", "betas", "memory_logits"}),
    (["MODEL.EMBED_PARTS", "[tp,cls]", "MODEL.PRSD.ENABLED", "False", "MODEL.MEMORY.NUM_PROXIES", "1"], 128,
     {"framewise_shape_logits", "betas"}),
])
def test_config_switches_select_modules_and_embedding_parts(opts, width, absent):
    _, model = make_tiny_sas(*opts)
    assert model.embedding_dim == width
    frames, camids, views, labels = make_clips(2)
    out = model.train()(frames, camids, views, labels)
    assert not absent & set(out)
    if model.memory is not None:
        assert out["memory_logits"].shape[1] == model.memory.num_proxies
    with torch.no_grad():
        assert model.eval()(frames, camids, views)["embedding"].shape == (2, width)


def test_embedding_part_of_a_disabled_module_is_an_error():
    with pytest.raises(ValueError, match="MGTM.ENABLED"):
        make_tiny_sas("MODEL.MGTM.ENABLED", "False")


class OpCounter(TorchDispatchMode):
    """Counts every ATen op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_has_no_python_loop_over_the_batch(mode):
    """The same ops run for a batch of 2 and of 6: nothing in the forward iterates over samples."""
    _, model = make_tiny_sas()
    model.train(mode == "train")
    with torch.no_grad():  # warm-up: MGTM caches its window index tensors per clip length on first use
        model(*make_clips(2))
    counts = []
    for batch in (2, 6):
        frames, camids, views, labels = make_clips(batch)
        with torch.no_grad(), OpCounter() as counter:
            model(frames, camids, views, labels)
        counts.append(counter.counts)
    assert counts[0] == counts[1]


ALL_ABLATIONS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "ablations", "*.yml")))
ABLATIONS = ALL_ABLATIONS[:5]   # Table 3 (cumulative rows); 06_tsm is Table 4's TSM row


def test_table4_tsm_row_is_the_full_model_without_the_prior():
    tsm, prsd = load_config(ALL_ABLATIONS[5]), load_config(ABLATIONS[-1])
    assert os.path.basename(ALL_ABLATIONS[5]) == "06_tsm.yml" and len(ALL_ABLATIONS) == 6
    assert tsm.LOSS.SHAPE_PRIOR_WEIGHT == 0.0 < prsd.LOSS.SHAPE_PRIOR_WEIGHT
    from configs import changed_keys

    assert {k for k, _, _ in changed_keys(prsd, tsm)} == {"LOSS.SHAPE_PRIOR_WEIGHT", "OUTPUT_DIR"}


def test_ablation_table_is_cumulative_and_each_row_builds():
    """Every ablation YAML loads, adds one switch to the row before, and builds (tiny backbone) with a
    consistent embedding; the last row is the paper model."""
    assert len(ABLATIONS) == 5
    switches = []
    for path in ABLATIONS:
        cfg = load_config(path)
        assert cfg.MODEL.BACKBONE == "ViT-L-14"
        switches.append((cfg.MODEL.MEMORY.ENABLED, cfg.INPUT.HUE_PROB > 0, cfg.MODEL.MGTM.ENABLED,
                         cfg.MODEL.PRSD.ENABLED))
        torch.manual_seed(0)
        model = build_model(load_config(path, TINY_SAS), NUM_CLASSES, NUM_CAMERAS)
        assert model.embed_parts == tuple(cfg.MODEL.EMBED_PARTS)
    assert [sum(s) for s in switches] == [0, 1, 2, 3, 4]
    assert all(sum(a) <= sum(b) and all(x <= y for x, y in zip(a, b)) for a, b in zip(switches, switches[1:]))
    paper = load_config(os.path.join(os.path.dirname(ABLATIONS[0]), "..", "sas_vit_l14.yml"))
    last = load_config(ABLATIONS[-1])
    for key in ("EMBED_PARTS", "MEMORY", "MGTM", "PRSD"):
        assert last.MODEL[key] == paper.MODEL[key], key
    assert last.INPUT == paper.INPUT


def shape_loss_only(*opts):
    """The model after backpropagating the shape losses alone (every other loss weight 0)."""
    cfg, model = make_tiny_sas("LOSS.MEMORY_WEIGHT", "0", "LOSS.FRAME_ID_WEIGHT", "0", *opts)
    model.train()
    frames, camids, views, labels = make_clips(4)
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


def test_framewise_shape_classifiers_have_bias_and_no_bnneck():
    _, model = make_tiny_sas()
    assert model.bottleneck_framewise_shape is None and model.classifier_framewise_shape.bias is not None
    model.train()
    positions = model.classifier_framewise_shape.weight.shape[0]
    framewise = torch.randn(2, positions, 10)
    with torch.no_grad():
        model.classifier_framewise_shape.bias.normal_()
    expected = torch.stack([framewise[:, t] @ model.classifier_framewise_shape.weight[t].T
                            + model.classifier_framewise_shape.bias[t] for t in range(positions)], dim=1)
    torch.testing.assert_close(model.classifier_framewise_shape(framewise), expected)
    _, earlier = make_tiny_sas("MODEL.PRSD.FRAMEWISE_BNNECK", "True")
    assert earlier.bottleneck_framewise_shape is not None and earlier.classifier_framewise_shape.bias is None
