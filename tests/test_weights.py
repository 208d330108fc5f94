"""model.weights: light to import (no model.backbone, no open_clip) and told by both of its callers
(the tower and the start-up check) when a tower is a built-in one without pretrained weights; the paper
configs name the pretrained shape files, and one key runs without them."""
import os
import subprocess
import sys

import pytest

from configs import load_config
from model.backbone import CLIPBackbone
from model.build import check_weight_files
from model.weights import PretrainedWeightsError, pretrained_weights_path
from tests.helpers.paths import REPO_ROOT


@pytest.mark.slow
def test_importing_weights_pulls_in_neither_the_tower_nor_open_clip():
    # model.prsd and model.smpl import PretrainedWeightsError from here; model.backbone imports this module
    code = ("import sys, model.weights; "
            "print(sorted(m for m in ('model.backbone', 'open_clip', 'safetensors') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("through", ["tower", "start-up check"])
def test_a_missing_file_for_a_builtin_tower_says_to_leave_the_path_empty(through, tmp_path):
    missing = str(tmp_path / "pretrained" / "tiny.pt")
    with pytest.raises(PretrainedWeightsError) as caught:
        if through == "tower":
            CLIPBackbone("tiny-vit-16", (64, 32), pretrain_path=missing)
        else:
            check_weight_files(load_config(None, ["MODEL.BACKBONE", "tiny-vit-16", "MODEL.PRETRAIN_PATH", missing]))
    message = str(caught.value)
    assert "tiny-vit-16 is a built-in test tower without pretrained weights; leave MODEL.PRETRAIN_PATH empty" in message
    assert missing in message and "Get CLIP weights" not in message


def test_a_pretrain_tag_for_a_builtin_tower_is_refused_before_any_lookup(monkeypatch):
    def no_lookup(*args, **kwargs):
        raise AssertionError("a built-in tower's tag was looked up")

    import model.weights

    monkeypatch.setattr(model.weights, "resolve_pretrained_tag", no_lookup)
    with pytest.raises(ValueError, match="tiny-vit-8 is a built-in tower without pretrained weights"):
        CLIPBackbone("tiny-vit-8", (64, 32), pretrain_tag="openai")


def test_an_open_clip_name_is_never_taken_for_a_builtin_tower(tmp_path):
    missing = str(tmp_path / "ViT-B-16.pt")
    with pytest.raises(PretrainedWeightsError, match="Get the OpenAI CLIP archive ViT-B-16.pt"):
        pretrained_weights_path("ViT-B-16", missing, builtin_tower=False)
    assert pretrained_weights_path("tiny-vit-16", "", "", builtin_tower=True) is None


def test_paper_configs_name_the_pretrained_shape_files_and_one_key_runs_without(tmp_path):
    for name in ("sas_vit_l14.yml", "sas_vit_b16.yml"):
        cfg = load_config(os.path.join(REPO_ROOT, "configs", name), ["MODEL.PRETRAIN_PATH", ""])
        assert cfg.MODEL.PRSD.PRETRAINED.endswith("tsm_model_wo.pth.tar")
        assert cfg.MODEL.PRSD.SMPL_MEAN_PARAMS.endswith("smpl_mean_params.npz")
        with pytest.raises(PretrainedWeightsError, match="MODEL.PRSD.(PRETRAINED|SMPL_MEAN_PARAMS).*LOAD_PRETRAINED"):
            check_weight_files(cfg)
        check_weight_files(load_config(os.path.join(REPO_ROOT, "configs", name),
                                       ["MODEL.PRETRAIN_PATH", "", "MODEL.PRSD.LOAD_PRETRAINED", "False"]))
