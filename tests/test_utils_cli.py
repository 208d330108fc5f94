"""Issue 11 pieces that need no training run: options anywhere, synthetic data only at a config's own
root, the tiny overlay (list _BASE_ and --overlay), and the ablation table writers."""
import os

import pytest

from configs import load_config
from tests.training_utils import DEMO, ROOT
from utils.cli import make_parser, parse_command_line

ABLATIONS = sorted(os.listdir(os.path.join(ROOT, "configs", "ablations")))


def parser():
    p = make_parser("test")
    p.add_argument("--resume", default="")
    p.add_argument("--overwrite", action="store_true")
    return p


def test_options_are_recognised_before_and_after_overrides():
    args = parse_command_line(parser(), ["OUTPUT_DIR", "o", "--resume", "auto", "SOLVER.BASE_LR", "-1e-3", "--overwrite"])
    assert args.resume == "auto" and args.overwrite
    assert args.opts == ["OUTPUT_DIR", "o", "SOLVER.BASE_LR", "-1e-3"]


@pytest.mark.parametrize("stray", ["--resum", "--csv", "-x"])
def test_a_stray_option_is_an_unknown_option(stray, capsys):
    with pytest.raises(SystemExit):
        parse_command_line(parser(), ["OUTPUT_DIR", "o", stray, "auto"])
    err = capsys.readouterr().err
    assert f"unknown option {stray}" in err and "Unknown config key" not in err


def test_synthetic_data_only_at_the_config_files_own_root():
    assert load_config(DEMO).DATASETS.SYNTHETIC_IF_MISSING  # the demo's data/synthetic_xfd_v2
    typed = load_config(DEMO, ["DATASETS.ROOT_DIR", "data/synthtic_xfd"])
    assert not typed.DATASETS.SYNTHETIC_IF_MISSING
    asked = load_config(DEMO, ["DATASETS.ROOT_DIR", "data/x", "DATASETS.SYNTHETIC_IF_MISSING", "True"])
    assert asked.DATASETS.SYNTHETIC_IF_MISSING


def test_missing_root_without_generation_names_the_nearest_folder(tmp_path):
    from datasets.build import build_dataset
    from datasets.detreidx.scan import DatasetLayoutError

    typo = tmp_path / "a" / "b" / "xfd"
    with pytest.raises(DatasetLayoutError, match=f"nearest existing folder: {tmp_path}\\)"):
        build_dataset(load_config(DEMO, ["DATASETS.ROOT_DIR", str(typo)]))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("name", ABLATIONS)
def test_tiny_overlay_runs_the_paper_configs_small(name, tmp_path):
    path = os.path.join(ROOT, "configs", "ablations", name)
    paper = load_config(path)
    overlaid = load_config(path, overlays=["tiny.yml"])  # found under configs/
    (tmp_path / "x.yml").write_text(f"_BASE_: [{path}, {os.path.join(ROOT, 'configs', 'tiny.yml')}]\n")
    assert load_config(str(tmp_path / "x.yml")).dump() == overlaid.dump()
    assert overlaid.MODEL.BACKBONE == "tiny-vit-16" and overlaid.MODEL.PRETRAIN_PATH == ""
    assert overlaid.MODEL.PRSD.FEAT_DIM == 64 and overlaid.INPUT.SIZE_TRAIN == [128, 64]
    for key in ("EMBED_PARTS",):
        assert overlaid.MODEL[key] == paper.MODEL[key]
    for module in ("MEMORY", "MGTM", "PRSD"):
        assert overlaid.MODEL[module].ENABLED == paper.MODEL[module].ENABLED
    assert overlaid.INPUT.HUE_PROB == paper.INPUT.HUE_PROB
    demo = load_config(DEMO)
    assert demo.MODEL.BACKBONE == overlaid.MODEL.BACKBONE and demo.SOLVER.dump() == overlaid.SOLVER.dump()


def test_ablate_trains_each_config_and_writes_table_csv_and_plot(tmp_path):
    from tests.training_utils import tiny_opts
    from tools import ablate

    data_root = str(tmp_path / "data")
    opts = tiny_opts(data_root, "unused", epochs=1, **{"SOLVER.EVAL_PERIOD": "1", "INPUT.SIZE_TRAIN": "[64,32]"})[:-2]
    configs = [os.path.join(ROOT, "configs", "ablations", n) for n in ("01_baseline.yml", "04_mgtm.yml")]
    rows = ablate.main([*configs, "--overlay", "tiny.yml", "--output_dir", str(tmp_path / "abl"), *opts])
    # labels name every module a row has on (rows 02-03 are skipped here)
    assert [r["row"] for r in rows] == ["baseline", "baseline + memory + VC-CJ + MGTM"]
    assert [r["paper mAP-3"] for r in rows] == [30.79, 32.78]
    assert all(0 <= r["val mAP-3"][0] <= 100 and 0 <= r["val R1"][0] <= 100 for r in rows)
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| baseline |" in table and "30.79" in table and "epochs: 1" in table
    assert (tmp_path / "abl" / "ablation.csv").read_text().splitlines()[0] == ",".join(ablate.RUN_COLUMNS)
    assert (tmp_path / "abl" / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert os.path.isfile(tmp_path / "abl" / "01_baseline" / "checkpoint_best.pth")
