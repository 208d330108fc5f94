"""A configured weight file (CLIP, SMPL, SMPL mean parameters, PRSD regressor) that does not exist.

Row: the run fails at start-up, before the dataset is touched or a model is built, and the message
says which key, what file to get and where to put it.
"""
import os

import pytest

import train
from model.weights import PretrainedWeightsError
from tests.helpers.cli import assert_clean_failure, run_cli
from tests.helpers.paths import DEMO_CONFIG
from tests.helpers.training import make_tiny_opts

MISSING = {
    # key: (file name, extra overrides, words the message must hold: what to get)
    "MODEL.PRETRAIN_PATH": ("ViT-B-16.pt", ["MODEL.BACKBONE", "ViT-B-16"], ["ViT-B-16.pt", "openaipublic"]),
    "MODEL.PRSD.SMPL_MODEL_PATH": ("SMPL_NEUTRAL.npz", [], ["SMPL", "tools.convert_smpl"]),
    # the demo (tiny.yml) does not read the pretrained shape files; a run that does names what is missing
    "MODEL.PRSD.SMPL_MEAN_PARAMS": ("smpl_mean_params.npz", ["MODEL.PRSD.LOAD_PRETRAINED", "True"],
                                    ["smpl_mean_params.npz", "SPIN", "LOAD_PRETRAINED False"]),
    "MODEL.PRSD.PRETRAINED": ("spin_model_checkpoint.pt", ["MODEL.PRSD.LOAD_PRETRAINED", "True"],
                              ["SPIN", "LOAD_PRETRAINED False"]),
}


@pytest.mark.parametrize("key", sorted(MISSING))
def test_missing_weight_file_fails_before_data_and_model(key, tmp_path, monkeypatch):
    import processor.trainer as trainer_module

    name, extra, what = MISSING[key]
    value = str(tmp_path / "pretrained" / name)
    touched = []
    monkeypatch.setattr(trainer_module, "build_dataset", lambda cfg: touched.append("dataset"))
    monkeypatch.setattr(trainer_module, "build_model", lambda *a, **k: touched.append("model"))
    data_root = str(tmp_path / "not_generated_yet")
    with pytest.raises(PretrainedWeightsError) as caught:
        train.main(["--config_file", DEMO_CONFIG, *make_tiny_opts(data_root, str(tmp_path / "out"), epochs=1),
                    key, value, *extra])
    assert touched == []
    message = str(caught.value)
    assert key in message and f" at {value}" in message and "put " in message  # which key, where to put it
    for word in what:
        assert word in message


@pytest.mark.slow
@pytest.mark.parametrize("key", ["MODEL.PRSD.SMPL_MODEL_PATH", "MODEL.PRETRAIN_PATH"])
def test_train_cli_missing_weights_exits_at_start_up(key, tmp_path):
    name, extra, what = MISSING[key]
    value = str(tmp_path / "pretrained" / name)
    data_root = str(tmp_path / "not_generated_yet")  # the demo config would generate it if it were reached
    proc = run_cli("train.py", "--config_file", DEMO_CONFIG,
                   *make_tiny_opts(data_root, str(tmp_path / "out"), epochs=1), key, value, *extra)
    assert_clean_failure(proc, key, value, *what)
    assert not os.path.exists(data_root)
    assert "DetReIDX at" not in proc.stdout and "SASModel:" not in proc.stdout


def test_evaluate_with_a_missing_smpl_file_exits_before_building(tmp_path, monkeypatch):
    import evaluate_all_cases
    import model.build
    from configs import load_config
    from utils.checkpoint import save_checkpoint

    value = str(tmp_path / "pretrained" / "SMPL_NEUTRAL.npz")  # named by the stored config, gone on this machine
    data_root = str(tmp_path / "not_generated_yet")
    opts = make_tiny_opts(data_root, str(tmp_path / "out"), epochs=1)
    cfg = load_config(DEMO_CONFIG, opts + ["MODEL.PRSD.SMPL_MODEL_PATH", value])
    path = str(tmp_path / "checkpoint_last.pth")
    save_checkpoint({"config": cfg.dump(), "model": {}, "meta": {"num_classes": 4, "num_cameras": 3}}, path)
    monkeypatch.setattr(model.build, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    from utils.cli import is_explained_error

    with pytest.raises(PretrainedWeightsError) as caught:   # the command line prints it as one line
        evaluate_all_cases.main(["--model_path", path])
    assert is_explained_error(caught.value)
    assert "MODEL.PRSD.SMPL_MODEL_PATH" in str(caught.value) and f" at {value}" in str(caught.value)
    assert not os.path.exists(data_root)
