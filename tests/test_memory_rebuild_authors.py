"""The memory rebuild follows the authors by default (issue 18 point 3): clips encoded without SIE,
from frames i*(n//T), standardised by the BNNecks with the clips' own statistics (a train-mode
BatchNorm over the training set, running statistics untouched), class means of the unnormalised BN
features. Each choice has a key that restores the earlier one; the expected proxies are computed
here from the rule, on the appearance features the rebuild itself encoded."""
import pytest
import torch
import torch.nn.functional as F

import processor.trainer as trainer_module
from tests.datasets_fixtures import make_tiny_root
from tests.test_training_memory_rebuild import make_trainer


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("rebuild_authors_data"))


def rebuild_and_capture(trainer, monkeypatch):
    """Run one rebuild; -> (appearance (N, D+P), labels (N,), the rebuild cfg, SIE on during encoding)."""
    seen = {}
    encode = trainer_module.encode_tracklets

    def spy(model, cfg, tracklets, device, outputs=("embedding",), desc="encode"):
        seen["cfg"], seen["side_info"] = cfg, model.use_side_info
        result = encode(model, cfg, tracklets, device, outputs=outputs, desc=desc)
        seen["appearance"] = result["appearance"].clone()
        return result

    monkeypatch.setattr(trainer_module, "encode_tracklets", spy)
    trainer.rebuild_memory()
    labels = torch.tensor([t.label for t in trainer.dataset.train])
    return seen["appearance"], labels, seen["cfg"], seen["side_info"]


def class_centroids(features, labels, num_classes):
    sums = torch.zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    return F.normalize(sums, dim=1)


def bnneck_affine(model):
    weight = torch.cat([model.bottleneck_cls.weight, model.bottleneck_proj.weight]).detach()
    bias = torch.cat([model.bottleneck_cls.bias, model.bottleneck_proj.bias]).detach()
    return weight, bias


def test_default_rebuild_is_the_authors(tiny_root, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_root, tmp_path / "run")
    model = trainer.model
    with torch.no_grad():  # non-trivial affine BN parameters, so that the test sees them applied
        model.bottleneck_cls.weight.uniform_(0.5, 1.5)
        model.bottleneck_proj.weight.uniform_(0.5, 1.5)
    running_before = model.bottleneck_cls.running_mean.clone()
    appearance, labels, cfg, side_info = rebuild_and_capture(trainer, monkeypatch)
    assert side_info is False and model.use_side_info is True   # SIE off for the rebuild only
    assert cfg.TEST.SAMPLING == "blocks"
    weight, bias = bnneck_affine(model)
    standardised = (appearance - appearance.mean(0)) / torch.sqrt(appearance.var(0, unbiased=False) + 1e-5)
    expected = class_centroids(standardised * weight + bias, labels, model.num_classes)  # no per-clip L2
    proxies = model.memory.proxies
    torch.testing.assert_close(proxies[:, 0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(proxies[:, 1], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bottleneck_cls.running_mean, running_before)  # statistics untouched
    trainer.close()


def test_earlier_rebuild_is_one_set_of_keys_away(tiny_root, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_root, tmp_path / "run", "MODEL.MEMORY.REBUILD_BN", "running",
                           "MODEL.MEMORY.REBUILD_SIE", "True", "MODEL.MEMORY.REBUILD_NORMALIZE_CLIPS", "True",
                           "MODEL.MEMORY.REBUILD_SAMPLING", "even")
    model = trainer.model
    with torch.no_grad():
        model.bottleneck_cls.running_mean.uniform_(-1, 1)
        model.bottleneck_proj.running_var.uniform_(0.5, 2)
    appearance, labels, cfg, side_info = rebuild_and_capture(trainer, monkeypatch)
    assert side_info is True and cfg.TEST.SAMPLING == "even"
    weight, bias = bnneck_affine(model)
    mean = torch.cat([model.bottleneck_cls.running_mean, model.bottleneck_proj.running_mean])
    var = torch.cat([model.bottleneck_cls.running_var, model.bottleneck_proj.running_var])
    bn = (appearance - mean) / torch.sqrt(var + 1e-5) * weight + bias
    expected = class_centroids(F.normalize(bn, dim=1), labels, model.num_classes)
    torch.testing.assert_close(model.memory.proxies[:, 0], expected, rtol=1e-4, atol=1e-5)
    trainer.close()


def test_rebuild_without_sie_gives_other_features_than_with(tiny_root, tmp_path, monkeypatch):
    """The SIE switch really reaches the backbone (a camera embedding changes the class token)."""
    encode = trainer_module.encode_tracklets
    trainer = make_trainer(tiny_root, tmp_path / "run")
    with torch.no_grad():
        trainer.model.backbone.sie_camera.normal_(0, 1.0)
    without_sie, _, cfg, _ = rebuild_and_capture(trainer, monkeypatch)
    with_sie = encode(trainer.model, cfg, trainer.dataset.train, torch.device("cpu"), outputs=("appearance",))
    assert not torch.allclose(without_sie, with_sie["appearance"], atol=1e-3)
    trainer.close()


def test_bad_rebuild_keys_are_refused(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="MODEL.MEMORY.REBUILD_BN"):
        make_trainer(tiny_root, tmp_path / "run", "MODEL.MEMORY.REBUILD_BN", "train")
