"""The authors' module details as defaults, each behind a key that restores the earlier choice
(issue 18 points 5-7): bilinear positional embedding (test_backbone), PRSD dropouts 0.5 / 0.2,
framewise shape classifiers Linear with bias and no BNNeck, "bias" matched anywhere in a parameter
name (the GRUs' biases at x2), random erasing filled with (0.4914, 0.4822, 0.4465), test frames
i*(n//T), the submission's query rows in (PID, name as a string) order, and checkpoints written
before these keys keep their behaviour."""
import numpy as np
import pytest
import torch
import yaml

from configs import config_from_yaml_text, get_defaults, load_config
from datasets.frame_sampling import block_start_indices, inference_clips
from datasets.transforms import ClipTransform
from model.build import build_model
from solver.optimizer import build_optimizer
from tests.test_sas_model import NUM_CAMERAS, NUM_CLASSES, TINY


def tiny(*opts):
    torch.manual_seed(0)
    cfg = load_config(None, TINY + list(opts))
    return cfg, build_model(cfg, NUM_CLASSES, NUM_CAMERAS)


def test_prsd_dropouts_are_the_authors():
    cfg, model = tiny()
    assert (cfg.MODEL.PRSD.REGRESSOR_DROPOUT, cfg.MODEL.PRSD.AGG_DROPOUT) == (0.5, 0.2)
    assert model.prsd.regressor.drop1.p == 0.5 and model.prsd.regressor.drop2.p == 0.5
    assert {layer.dropout.p for layer in model.prsd.aggregator.transformer.layers} == {0.2}


def test_framewise_shape_classifiers_have_bias_and_no_bnneck():
    _, model = tiny()
    assert model.bottleneck_framewise_shape is None and model.classifier_framewise_shape.bias is not None
    model.train()
    positions = model.classifier_framewise_shape.weight.shape[0]
    framewise = torch.randn(2, positions, 10)
    with torch.no_grad():
        model.classifier_framewise_shape.bias.normal_()
    expected = torch.stack([framewise[:, t] @ model.classifier_framewise_shape.weight[t].T
                            + model.classifier_framewise_shape.bias[t] for t in range(positions)], dim=1)
    torch.testing.assert_close(model.classifier_framewise_shape(framewise), expected)
    _, earlier = tiny("MODEL.PRSD.FRAMEWISE_BNNECK", "True")
    assert earlier.bottleneck_framewise_shape is not None and earlier.classifier_framewise_shape.bias is None


def optimizer_lr(cfg, model, name):
    for group in build_optimizer(cfg, model).param_groups:
        if name in group["names"]:
            return group["lr"]
    raise KeyError(name)


def test_gru_biases_train_at_the_bias_factor():
    cfg, model = tiny()
    assert cfg.SOLVER.BIAS_NAME_MATCH == "substring"
    base = cfg.SOLVER.BASE_LR
    assert optimizer_lr(cfg, model, "prsd.encoder.gru.bias_ih_l0") == pytest.approx(base * cfg.SOLVER.BIAS_LR_FACTOR)
    assert optimizer_lr(cfg, model, "prsd.encoder.gru.weight_ih_l0") == pytest.approx(base)
    cfg, model = tiny("SOLVER.BIAS_NAME_MATCH", "suffix")
    assert optimizer_lr(cfg, model, "prsd.encoder.gru.bias_ih_l0") == pytest.approx(base)


def test_random_erasing_fills_with_the_authors_values():
    cfg = get_defaults()
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.ERASE_PROB", "1.0", "INPUT.FLIP_PROB", "0.0",
                         "INPUT.HUE_PROB", "0.0"])
    transform = ClipTransform.from_cfg(cfg, train=True)
    frames = [np.full((32, 16, 3), 128, np.uint8)] * 2
    clip = transform(frames, np.random.default_rng(0))
    fill = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1)
    erased = (clip[0] - fill[:, :, None]).abs().sum(0) < 1e-6    # pixels equal to the fill in all channels
    assert erased.any() and torch.equal(erased, (clip[1] - fill[:, :, None]).abs().sum(0) < 1e-6)


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 31, 100])
def test_test_frames_are_block_starts(frames):
    assert get_defaults().TEST.SAMPLING == "blocks"
    padded = list(range(frames)) + [frames - 1] * max(0, 16 - frames)   # pad with the last frame
    expected = [padded[i * (len(padded) // 16)] for i in range(16)]     # the authors' i*(n//T)
    assert block_start_indices(frames, 16).tolist() == expected
    assert [c.tolist() for c in inference_clips(frames, 16, "blocks")] == [expected]


def test_submission_rows_sort_tracklet_names_as_strings(tmp_path):
    from utils.submission import scan_case_folders

    for part, names in (("query", ["0024_987", "0024_5453", "0003_12"]), ("gallery", ["0024_1"])):
        for name in names:
            (tmp_path / "case1_aerial_to_ground" / part / name[:4] / name).mkdir(parents=True)
    queries, _ = scan_case_folders(str(tmp_path))[1]
    assert queries == ["0003_12", "0024_5453", "0024_987"]   # PID as int, then the name as a string


def test_checkpoint_configs_written_before_the_keys_keep_their_behaviour():
    data = yaml.safe_load(get_defaults().dump())
    for group, key in (("MODEL", "POS_EMBED_INTERP"), ("SOLVER", "BIAS_NAME_MATCH"), ("INPUT", "ERASE_FILL")):
        del data[group][key]
    for key in ("UPDATE", "REBUILD_BN", "REBUILD_SIE", "REBUILD_NORMALIZE_CLIPS", "REBUILD_SAMPLING"):
        del data["MODEL"]["MEMORY"][key]
    del data["MODEL"]["MGTM"]["FRAME_SOURCE"]
    prsd = data["MODEL"]["PRSD"]
    del prsd["FRAMEWISE_BNNECK"], prsd["REGRESSOR_DROPOUT"], prsd["AGG_DROPOUT"]
    prsd["DROPOUT"] = 0.1                                         # the key these two replaced
    cfg = config_from_yaml_text(yaml.safe_dump(data))
    assert cfg.MODEL.POS_EMBED_INTERP == "bicubic" and cfg.SOLVER.BIAS_NAME_MATCH == "suffix"
    assert list(cfg.INPUT.ERASE_FILL) == [0.0, 0.0, 0.0]
    memory = cfg.MODEL.MEMORY
    assert (memory.UPDATE, memory.REBUILD_BN, memory.REBUILD_SIE, memory.REBUILD_NORMALIZE_CLIPS,
            memory.REBUILD_SAMPLING) == ("batch_mean", "running", True, True, "even")
    assert cfg.MODEL.MGTM.FRAME_SOURCE == "fused" and cfg.MODEL.PRSD.FRAMEWISE_BNNECK is True
    assert (cfg.MODEL.PRSD.REGRESSOR_DROPOUT, cfg.MODEL.PRSD.AGG_DROPOUT) == (0.1, 0.1)
    # A config of today is read back unchanged.
    assert config_from_yaml_text(get_defaults().dump()) == get_defaults()


def test_paper_configs_name_the_pretrained_shape_files_and_one_key_runs_without(tmp_path):
    import os

    from model.weights import PretrainedWeightsError
    from model.build import check_weight_files

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("sas_vit_l14.yml", "sas_vit_b16.yml"):
        cfg = load_config(os.path.join(root, "configs", name), ["MODEL.PRETRAIN_PATH", ""])
        assert cfg.MODEL.PRSD.PRETRAINED.endswith("tsm_model_wo.pth.tar")
        assert cfg.MODEL.PRSD.SMPL_MEAN_PARAMS.endswith("smpl_mean_params.npz")
        with pytest.raises(PretrainedWeightsError, match="MODEL.PRSD.(PRETRAINED|SMPL_MEAN_PARAMS).*LOAD_PRETRAINED"):
            check_weight_files(cfg)
        check_weight_files(load_config(os.path.join(root, "configs", name),
                                       ["MODEL.PRETRAIN_PATH", "", "MODEL.PRSD.LOAD_PRETRAINED", "False"]))
