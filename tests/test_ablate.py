"""``python -m tools.ablate`` (tools/ablate.py): every config trains and gets its row in the paper-style table, CSV
and plot; with several seeds (issue 18) once per seed, the table giving mean ± std per row and the CSV one line
per run; the R1 column is the validation R1, the weights column names the checkpoint each run used, and --test
adds the test mAP-3 of those weights (issue 20)."""
import csv
import math
import os

import pytest

from tests.helpers.paths import REPO_ROOT
from tests.helpers.training import make_tiny_opts
from tools import ablate


def test_seeds_parse_as_a_count_or_a_list():
    assert ablate.parse_seeds("3") == [0, 1, 2] and ablate.parse_seeds("0,7") == [0, 7]
    assert ablate.parse_seeds(None) is None
    for bad in ("0,0", "x", "0"):
        with pytest.raises(ValueError, match="--seeds"):
            ablate.parse_seeds(bad)


def test_mean_and_sample_std():
    assert ablate.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    assert ablate.mean_std([5.0, None]) == (5.0, None) and ablate.mean_std([]) == (None, None)


@pytest.mark.slow
def test_two_seeds_train_twice_and_the_table_gives_mean_and_std(train_data_root, tmp_path, monkeypatch):
    opts = make_tiny_opts(train_data_root, "unused", epochs=1,
                          **{"SOLVER.EVAL_PERIOD": "1", "INPUT.SIZE_TRAIN": "[64,32]"})[:-2]
    config = os.path.join(REPO_ROOT, "configs", "ablations", "01_baseline.yml")
    out = tmp_path / "abl"
    rows = ablate.main([config, "--overlay", "tiny.yml", "--seeds", "3,5", "--test", "--output_dir", str(out), *opts])
    assert len(rows) == 1 and rows[0]["seeds"] == [3, 5]
    with open(out / "ablation.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [int(r["seed"]) for r in runs] == [3, 5]
    for seed, run in zip((3, 5), runs):
        folder = out / "01_baseline" / f"seed{seed}"
        assert (folder / "checkpoint_best.pth").is_file() and (folder / "submission.csv").is_file()
        import json

        results = json.loads((folder / "test_results.json").read_text())
        assert float(run["test mAP-3"]) == pytest.approx(results["mAP-3"])
        assert run["weights"].startswith(os.path.basename(results["checkpoint"]))   # the checkpoint the run used
    values = [float(r["val R1"]) for r in runs]
    assert rows[0]["val R1"] == ablate.mean_std(values)
    table = (out / "ablation.md").read_text()
    assert "seeds: 3, 5" in table and "--seeds 3,5" in table and "±" in table


def test_resume_continues_every_run_and_refuses_overwrite(tmp_path, monkeypatch):
    from processor import training_run

    seen = []

    def fake_run_training(cfg, **options):
        seen.append((cfg, options))
        return {}

    monkeypatch.setattr(training_run, "run_training", fake_run_training)
    config = os.path.join(REPO_ROOT, "configs", "ablations", "01_baseline.yml")
    args = ablate.parse_args([config, "--resume", "--seeds", "2", "--output_dir", str(tmp_path)])
    for seed in args.seed_list:
        ablate.train_one(config, args, seed)
    assert [options["resume"] for _, options in seen] == ["auto", "auto"]
    assert [cfg.OUTPUT_DIR for cfg, _ in seen] == [str(tmp_path / "01_baseline" / f"seed{s}") for s in (0, 1)]
    assert [cfg.SOLVER.SEED for cfg, _ in seen] == [0, 1]
    # An interrupted run says how to continue it: its own train.py command.
    assert all(options["resume_hint"].startswith("python train.py --config_file") for _, options in seen)
    with pytest.raises(SystemExit):
        ablate.parse_args([config, "--resume", "--overwrite"])


@pytest.mark.slow
def test_ablate_trains_each_config_and_writes_table_csv_and_plot(train_data_root, tmp_path):
    opts = make_tiny_opts(train_data_root, "unused", epochs=1,
                          **{"SOLVER.EVAL_PERIOD": "1", "INPUT.SIZE_TRAIN": "[64,32]"})[:-2]
    configs = [os.path.join(REPO_ROOT, "configs", "ablations", n) for n in ("01_baseline.yml", "04_mgtm.yml")]
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


def test_a_run_row_takes_r1_from_mean_r1_and_names_the_weights_it_used(tmp_path, monkeypatch):
    """Each column from its own summary key (no training: the training run reports fixed figures)."""
    from processor import training_run

    config = os.path.join(REPO_ROOT, "configs", "ablations", "01_baseline.yml")
    args = ablate.parse_args([config, "--output_dir", str(tmp_path)])
    out = ablate.run_output_dir(args, config, None)

    def fake_run_training(cfg, **options):
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        return {"final_val": {"mAP-3": 11.0, "mean_R1": 22.0, "mean_mAP": 33.0,
                              "clothes_changed": {"clothes changed": {"mAP": 44.0}}},
                "test": None, "final_weights": {"checkpoint": "/runs/x/checkpoint_epoch7.pth", "epoch": 7}}

    monkeypatch.setattr(training_run, "run_training", fake_run_training)
    row = ablate.train_one(config, args)
    assert row["val mAP-3"] == 11.0 and row["val R1"] == 22.0 and row["val clothes changed mAP"] == 44.0
    assert row["test mAP-3"] is None and row["weights"] == "checkpoint_epoch7.pth (epoch 7)"


def test_one_seed_trains_into_the_config_folder_several_into_seed_folders(tmp_path):
    config = os.path.join(REPO_ROOT, "configs", "ablations", "01_baseline.yml")
    one = ablate.parse_args([config, "--seeds", "1", "--output_dir", str(tmp_path)])
    assert ablate.run_output_dir(one, config, 0) == str(tmp_path / "01_baseline")
    two = ablate.parse_args([config, "--seeds", "0,7", "--output_dir", str(tmp_path)])
    assert ablate.run_output_dir(two, config, 7) == str(tmp_path / "01_baseline" / "seed7")
