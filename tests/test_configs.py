"""The config system (configs/): every YAML loads, _BASE_ inheritance, overrides, clear errors for bad input,
synthetic data only at a config file's own root, the tiny overlay (list _BASE_ and --overlay), and checkpoint
configs written before a key keep their behaviour."""
import glob
import os
import re

import pytest
import yaml

from configs import ConfigError, config_from_yaml_text, load_config
from configs.defaults import get_defaults
from tests.helpers.paths import DEMO_CONFIG, REPO_ROOT

ABLATIONS = sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "ablations")))


def all_yaml_files():
    return sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yml"), recursive=True))


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_every_yaml_loads(path):
    cfg = load_config(path)
    assert cfg.is_frozen()


def test_paper_configs_match_the_paper():
    large = load_config(os.path.join(REPO_ROOT, "configs", "sas_vit_l14.yml"))
    base = load_config(os.path.join(REPO_ROOT, "configs", "sas_vit_b16.yml"))
    assert large.MODEL.BACKBONE == "ViT-L-14" and list(large.INPUT.SIZE_TRAIN) == [252, 126]
    assert base.MODEL.BACKBONE == "ViT-B-16" and list(base.INPUT.SIZE_TRAIN) == [256, 128]
    assert base.SOLVER.MAX_EPOCHS == 40 and base.SOLVER.BASE_LR == 3.5e-4 and base.SOLVER.BACKBONE_LR == 5e-6
    assert base.SOLVER.STEPS == [10, 20, 30] and base.SOLVER.IMS_PER_BATCH == 16 and base.DATALOADER.SEQ_LEN == 8


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "a.yml").write_text("SOLVER:\n  BASE_LR: 0.5\n  MAX_EPOCHS: 3\n")
    (tmp_path / "b.yml").write_text("_BASE_: a.yml\nSOLVER:\n  MAX_EPOCHS: 7\n")
    cfg = load_config(str(tmp_path / "b.yml"), ["SOLVER.MAX_EPOCHS", "9", "TEST.CASES", "[1,3]", "SOLVER.GAMMA", "1",
                                                   "SOLVER.BASE_LR", "3e-3"])
    assert cfg.SOLVER.BASE_LR == 3e-3
    assert cfg.SOLVER.MAX_EPOCHS == 9
    assert cfg.TEST.CASES == [1, 3]
    assert cfg.SOLVER.GAMMA == 1.0 and isinstance(cfg.SOLVER.GAMMA, float)


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_LRR.*bad\.yml"):
        load_config(str(path))


def test_unknown_key_on_command_line_is_named():
    with pytest.raises(ConfigError, match=r"MODEL\.NOPE"):
        load_config(None, ["MODEL.NOPE", "1"])


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yml").write_text("_BASE_: b.yml\n")
    (tmp_path / "b.yml").write_text("_BASE_: a.yml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yml"))


def test_wrong_value_type_is_named(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("SOLVER:\n  MAX_EPOCHS: ten\n")
    with pytest.raises(ConfigError, match=r"MAX_EPOCHS"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_EPOCHS"):
        load_config(None, ["SOLVER.MAX_EPOCHS", "ten"])


def test_missing_file_and_odd_overrides():
    with pytest.raises(ConfigError, match="not found"):
        load_config("nope/missing.yml")
    with pytest.raises(ConfigError, match="pairs"):
        load_config(None, ["SOLVER.MAX_EPOCHS"])


def test_stored_config_round_trip():
    cfg = load_config(os.path.join(REPO_ROOT, "configs", "demo.yml"))
    again = config_from_yaml_text(cfg.dump())
    assert again == cfg


def _leaf_keys(node, prefix=()):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _leaf_keys(value, prefix + (key,))
        else:
            yield prefix + (key,)


def test_every_default_key_is_read_somewhere():
    """No dead flags: each key is read by code outside defaults.py (as SECTION.KEY, or .KEY if unique)."""
    sources = []
    for path in glob.glob(os.path.join(REPO_ROOT, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, REPO_ROOT)
        if rel.startswith(("tests", ".venv", "configs/defaults.py")) or "/." in rel:
            continue
        with open(path, encoding="utf-8") as f:
            sources.append(f.read())
    code = "\n".join(sources)
    leaves = list(_leaf_keys(get_defaults()))
    leaf_counts = {}
    for key in leaves:
        leaf_counts[key[-1]] = leaf_counts.get(key[-1], 0) + 1
    unread = []
    for key in leaves:
        qualified = ".".join(key[-2:]) if len(key) > 1 else key[0]
        if qualified in code:
            continue
        if leaf_counts[key[-1]] == 1 and re.search(r"[.\[\"']" + re.escape(key[-1]) + r"\b", code):
            continue
        unread.append(".".join(key))
    assert not unread, f"config keys never read by the code: {unread}"


def test_clear_keys_empties_text_and_flags():
    from configs import PRETRAINED_KEYS, clear_keys

    cfg = load_config(None, ["MODEL.PRETRAIN_PATH", "w.pt", "MODEL.PRSD.PRETRAINED", "prsd.pth",
                             "DATASETS.SYNTHETIC_IF_MISSING", "True"], freeze=False)
    clear_keys(cfg, PRETRAINED_KEYS + ("DATASETS.SYNTHETIC_IF_MISSING",))
    assert cfg.MODEL.PRETRAIN_PATH == "" and cfg.MODEL.PRETRAIN_TAG == "" and cfg.MODEL.PRSD.PRETRAINED == ""
    assert cfg.DATASETS.SYNTHETIC_IF_MISSING is False


def test_synthetic_data_only_at_the_config_files_own_root():
    assert load_config(DEMO_CONFIG).DATASETS.SYNTHETIC_IF_MISSING  # the demo's data/synthetic_xfd_v2
    typed = load_config(DEMO_CONFIG, ["DATASETS.ROOT_DIR", "data/synthtic_xfd"])
    assert not typed.DATASETS.SYNTHETIC_IF_MISSING
    asked = load_config(DEMO_CONFIG, ["DATASETS.ROOT_DIR", "data/x", "DATASETS.SYNTHETIC_IF_MISSING", "True"])
    assert asked.DATASETS.SYNTHETIC_IF_MISSING


@pytest.mark.parametrize("name", ABLATIONS)
def test_tiny_overlay_runs_the_paper_configs_small(name, tmp_path):
    path = os.path.join(REPO_ROOT, "configs", "ablations", name)
    paper = load_config(path)
    overlaid = load_config(path, overlays=["tiny.yml"])  # found under configs/
    (tmp_path / "x.yml").write_text(f"_BASE_: [{path}, {os.path.join(REPO_ROOT, 'configs', 'tiny.yml')}]\n")
    assert load_config(str(tmp_path / "x.yml")).dump() == overlaid.dump()
    assert overlaid.MODEL.BACKBONE == "tiny-vit-16" and overlaid.MODEL.PRETRAIN_PATH == ""
    assert overlaid.MODEL.PRSD.FEAT_DIM == 64 and overlaid.INPUT.SIZE_TRAIN == [128, 64]
    for key in ("EMBED_PARTS",):
        assert overlaid.MODEL[key] == paper.MODEL[key]
    for module in ("MEMORY", "MGTM", "PRSD"):
        assert overlaid.MODEL[module].ENABLED == paper.MODEL[module].ENABLED
    assert overlaid.INPUT.HUE_PROB == paper.INPUT.HUE_PROB
    demo = load_config(DEMO_CONFIG)
    assert demo.MODEL.BACKBONE == overlaid.MODEL.BACKBONE and demo.SOLVER.dump() == overlaid.SOLVER.dump()


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
