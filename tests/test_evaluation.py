"""Three-case evaluation (processor/evaluation.py): each tracklet encoded once, CSV/score agreement, dense sampling,
anonymised test sets, the summary's pooled mAP-3, and the model rebuilt from a checkpoint by evaluate_all_cases."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import evaluate_all_cases
from datasets.build import build_dataset
from model.build import build_model
from processor.encoding import unique_tracklets
from processor.evaluation import CaseResult, format_summary, run_case_evaluation, summarize
from tests.helpers.data import make_tiny_cfg
from utils.checkpoint import save_checkpoint
from utils.submission import check_submission, score_submission


def eval_cfg(root, *opts):
    """The tiny data config with frames large enough for the 16-pixel patches of tiny-vit-16."""
    return make_tiny_cfg(root, "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]", *opts)


@pytest.fixture(scope="module")
def setup(tiny_root):
    """(cfg, dataset, model): the tiny data and a randomly initialised model in eval mode."""
    cfg = eval_cfg(tiny_root)
    dataset = build_dataset(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=dataset.num_train_pids, num_cameras=dataset.num_cameras).eval()
    return cfg, dataset, model


class CountingModel(torch.nn.Module):
    """Counts how many clips pass through the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.clips = 0

    def forward(self, frames, camids, views=None, labels=None):
        self.clips += frames.shape[0]
        return self.model(frames, camids, views)


@pytest.mark.slow
def test_each_tracklet_is_encoded_once_and_csv_scores_match(setup, tmp_path):
    cfg, dataset, model = setup
    counting = CountingModel(model)
    csv = str(tmp_path / "sub.csv")
    summary = run_case_evaluation(cfg, counting, dataset.cases, torch.device("cpu"), str(tmp_path),
                                  csv_path=csv, json_path=str(tmp_path / "r.json"))
    tracklets, index = unique_tracklets(dataset.cases)
    assert counting.clips == len(tracklets)  # even sampling: one clip per unique tracklet
    all_records = sum(len(s.query) + len(s.gallery) for s in dataset.cases.values())
    assert len(tracklets) < all_records  # case 1 query doubles as case 2 gallery: shared, not re-encoded
    assert check_submission(csv, dataset.root) == []
    scores = score_submission(csv)
    for case, entry in summary["cases"].items():  # scorer: fractions; summary: percentages
        for key in ("mAP", "R1", "R5", "R10", "R20"):
            assert 100 * scores[case][key] == pytest.approx(entry[key], abs=1e-9), (case, key)
    assert 100 * scores["overall"]["mAP-3"] == pytest.approx(summary["mAP-3"], abs=1e-9)
    written = json.load(open(tmp_path / "r.json"))
    assert set(written["cases"]) == {"1", "2", "3"} and "mAP-3" in written
    assert written["rules"] == {"junk": cfg.TEST.JUNK_RULE, "ap": cfg.TEST.AP_MODE}


def test_dense_sampling_averages_chunks(setup, tmp_path):
    cfg, dataset, model = setup
    dense = eval_cfg(dataset.root, "TEST.SAMPLING", "dense")
    counting = CountingModel(model)
    run_case_evaluation(dense, counting, {1: dataset.cases[1]}, torch.device("cpu"), str(tmp_path))
    chunks = sum(-(-len(t.frames) // dense.TEST.SEQ_LEN) for t in unique_tracklets({1: dataset.cases[1]})[0])
    assert counting.clips == chunks


def anonymise(root, tmp_path):
    """Copy ``root`` with every query PID folder renamed so no query pid occurs in its gallery."""
    copy = str(tmp_path / "anon")
    shutil.copytree(root, copy)
    for case_folder in sorted(os.listdir(copy)):
        query = os.path.join(copy, case_folder, "query")
        if not os.path.isdir(query):
            continue
        for pid in sorted(os.listdir(query)):
            os.rename(os.path.join(query, pid), os.path.join(query, f"{9000 + int(pid):04d}"))
    return copy


def test_anonymised_test_set_gives_csv_and_no_metrics(setup, tmp_path, caplog):
    cfg, _, model = setup
    anon_root = anonymise(setup[1].root, tmp_path)
    anon_cfg = eval_cfg(anon_root)
    dataset = build_dataset(anon_cfg)
    assert not any(s.has_ground_truth for s in dataset.cases.values())
    csv = str(tmp_path / "anon.csv")
    caplog.set_level("INFO")
    summary = run_case_evaluation(anon_cfg, model, dataset.cases, torch.device("cpu"), str(tmp_path), csv_path=csv)
    assert os.path.isfile(csv) and check_submission(csv, anon_root) == []
    assert summary["metrics_available"] is False and "mAP-3" not in summary
    assert all("mAP" not in entry for entry in summary["cases"].values())
    assert "Metrics unavailable" in caplog.text


@pytest.mark.slow
def test_cli_rebuilds_model_from_checkpoint(setup, tmp_path, capsys):
    cfg, dataset, model = setup
    ckpt = str(tmp_path / "model.pth")
    save_checkpoint({"model": model.state_dict(), "config": cfg.dump(), "epoch": 3,
                     "meta": {"num_classes": dataset.num_train_pids, "num_cameras": dataset.num_cameras}}, ckpt)
    out = str(tmp_path / "cli")
    summary = evaluate_all_cases.main(["--model_path", ckpt, "--cases", "1,3", "--save_features", str(tmp_path / "f.npz"),
                                       "--visualize", "1", "OUTPUT_DIR", out])
    assert sorted(summary["cases"]) == [1, 3] and summary["epoch"] == 3
    eval_dir = os.path.join(out, "eval", "model")  # OUTPUT_DIR/eval/<checkpoint stem>
    assert os.path.isfile(os.path.join(eval_dir, "submission.csv")) and os.path.isfile(os.path.join(eval_dir, "results.json"))
    feats = np.load(tmp_path / "f.npz")
    assert feats["features"].shape[1] == model.embedding_dim
    assert {"pids", "camids", "names", "case1_query", "case1_gallery", "case3_query", "case3_gallery"} <= set(feats.files)
    assert os.listdir(os.path.join(eval_dir, "ranklists_case1"))
    for bad in ("4", "1,x"):   # a usage error naming the option, not a traceback
        with pytest.raises(SystemExit) as stop:
            evaluate_all_cases.main(["--model_path", ckpt, "--cases", bad, "OUTPUT_DIR", out])
        assert stop.value.code == 2 and "argument --cases" in capsys.readouterr().err


def test_summary_pools_queries_and_skips_cases_without_a_match():
    """mAP-3 weighs each case by its queries with a true match; the mean over cases leaves out a case with
    ground truth but no such query (not a nan that hides the others); a case without ground truth is unavailable."""
    def result(case, aps, hits):
        aps = np.array(aps, dtype=np.float64)
        valid = ~np.isnan(aps)
        metrics = {"AP": aps, "R1_hit": np.array(hits), "num_valid": int(valid.sum()),
                   "mAP": float(aps[valid].mean()) if valid.any() else float("nan"),
                   "R1": float(np.array(hits)[valid].mean()) if valid.any() else float("nan"),
                   "mINP": 0.0, "R5": 0.0, "R10": 0.0, "R20": 0.0}
        return CaseResult(case, [f"q{i}" for i in range(len(aps))], ["g"], np.zeros((len(aps), 1), int), metrics)

    results = {1: result(1, [1.0, 0.5, np.nan], [True, False, False]), 2: result(2, [0.2], [False]),
               3: result(3, [np.nan], [False])}
    summary = summarize(results, "tracklet", "trapezoid")
    assert summary["mAP-3"] == pytest.approx(100 * (1.0 + 0.5 + 0.2) / 3)
    assert summary["mean_mAP"] == pytest.approx(100 * (0.75 + 0.2) / 2)
    assert summary["mean_R1"] == pytest.approx(100 * (0.5 + 0.0) / 2)
    assert "mAP-3 (pooled over queries): 56.67" in format_summary(summary)
    results[3] = CaseResult(3, ["q0"], ["g"], np.zeros((1, 1), int), None)
    summary = summarize(results, "tracklet", "trapezoid")
    assert summary["cases_scored"] == [1, 2] and summary["cases"][3]["metrics"].startswith("unavailable")


def test_map3_pools_the_scored_queries_of_all_cases():
    """mAP-3 weights each case by its queries that have a true match (num_valid), not by all its queries."""
    def result(case, m_ap, valid, queries=4):
        ap = np.array([m_ap] * valid + [np.nan] * (queries - valid))     # nan: a query without a true match
        metrics = {"mAP": m_ap, "mINP": m_ap, "R1": m_ap, "R5": 1.0, "R10": 1.0, "R20": 1.0, "num_valid": valid,
                   "AP": ap, "R1_hit": ~np.isnan(ap)}
        return CaseResult(case, [f"{i}_1" for i in range(queries)], ["9_9"], np.zeros((queries, 1), int), metrics)

    summary = summarize({1: result(1, 0.5, 1), 2: result(2, 1.0, 3)}, "tracklet", "trapezoid")
    assert summary["mAP-3"] == pytest.approx((50.0 * 1 + 100.0 * 3) / 4)
    assert summary["mean_mAP"] == pytest.approx(75.0)
