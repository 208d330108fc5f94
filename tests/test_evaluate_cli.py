"""``python evaluate_all_cases.py`` as a researcher runs it (issue 11 and after): the checkpoint named, cases that
need only their own folders, read-only evaluation in its own folder with the changed keys reported, the data root
checked before anything is built or written, ``--config_file`` model keys, a test tracklet without a session.

The subprocess runs evaluate the shared tiny training run (the trained_run fixture: one ``train.py`` run per
session); the in-process ones the tiny random checkpoint.
"""
import json
import os
import shutil

import pytest

from tests.helpers.cli import assert_clean_failure, assert_ok, output_of, run_cli
from tests.helpers.data import break_session
from tests.helpers.files import snapshot
from tests.helpers.paths import DEMO_CONFIG
from utils.protocol import CASE_FOLDERS

pytestmark = pytest.mark.slow   # every test here runs the command end to end


def test_evaluation_names_the_checkpoint_and_has_no_random_init_warning(trained_run):
    _, run, _, _ = trained_run
    ckpt = os.path.join(run, "checkpoint_best.pth")
    proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt)
    assert_ok(proc)
    text = output_of(proc)
    assert f"Loaded {ckpt} (epoch " in text and "trained with " in text and "configs/demo.yml" in text
    assert "random init" not in text
    results = json.load(open(os.path.join(run, "eval", "checkpoint_best", "results.json")))
    assert results["checkpoint"] == ckpt and isinstance(results["epoch"], int) and results["rules"]["junk"] == "tracklet"


def test_cases_need_only_their_folders_and_layout_errors_have_no_traceback(trained_run, tmp_path):
    data_root, run, _, _ = trained_run
    partial = str(tmp_path / "partial")
    shutil.copytree(data_root, partial)
    shutil.rmtree(os.path.join(partial, "case2_ground_to_aerial"))
    ckpt = os.path.join(run, "checkpoint_best.pth")
    proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--cases", "1,3", "DATASETS.ROOT_DIR", partial,
                   "--eval_dir", str(tmp_path / "e13"))
    assert_ok(proc)
    assert sorted(json.load(open(tmp_path / "e13" / "results.json"))["cases"]) == ["1", "3"]
    missing = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--cases", "2", "DATASETS.ROOT_DIR", partial,
                      "--eval_dir", str(tmp_path / "e2"))
    assert_clean_failure(missing, os.path.join(partial, "case2_ground_to_aerial"))
    shutil.rmtree(os.path.join(partial, "case3_aerial_to_aerial", "query"))
    broken = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--cases", "1,3", "DATASETS.ROOT_DIR", partial,
                     "--eval_dir", str(tmp_path / "e3"))
    assert_clean_failure(broken, "case3_aerial_to_aerial")


# ----------------------------------------------------------------------------- evaluation is read-only
def test_evaluation_writes_only_its_own_folder_and_reports_changed_keys(trained_run, tmp_path):
    _, run, _, _ = trained_run
    before = snapshot(run)
    ckpt = os.path.join(run, "checkpoint_last.pth")
    csv_path = str(tmp_path / "mine.csv")
    proc = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "--config_file", DEMO_CONFIG, *_data_opts(trained_run),
                   "TEST.SEQ_LEN", "2", "--visualize", "1", "--csv", csv_path)
    assert_ok(proc)
    text = output_of(proc)
    assert "TEST.SEQ_LEN: 4 -> 2 (the command line)" in text
    assert "DATALOADER.NUM_WORKERS: 0 -> 2 (--config_file" in text  # demo.yml's value against the stored one
    assert snapshot(run) == before, "evaluation changed the training folder"
    eval_dir = os.path.join(run, "eval", "checkpoint_last")
    assert os.path.isfile(csv_path) and not os.path.exists(os.path.join(eval_dir, "submission.csv"))
    for name in ("results.json", "evaluate_log.txt", "per_condition_case1.png", "ranklists_case1"):
        assert os.path.exists(os.path.join(eval_dir, name)), name
    again = run_cli("evaluate_all_cases.py", "--model_path", ckpt, "TEST.RERANK", "True")
    assert_ok(again)
    assert os.path.isfile(os.path.join(run, "eval", "checkpoint_last-rerank", "results.json"))
    assert open(os.path.join(eval_dir, "evaluate_log.txt")).read().count("Loaded ") == 1


def _data_opts(trained):
    """The data keys of the tiny run (the demo file names another root and frame size)."""
    opts = trained[3]
    keep = ("DATASETS.ROOT_DIR", "INPUT.SIZE_TEST", "DATASETS.VAL_IDS")
    return [w for k, v in zip(opts[0::2], opts[1::2]) if k in keep for w in (k, v)]


def test_evaluation_checks_the_data_root_before_writing_or_building(tiny_checkpoint, tmp_path, monkeypatch):
    import evaluate_all_cases
    import model.build
    from datasets.detreidx.scan import DatasetLayoutError

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the data root was checked")

    monkeypatch.setattr(model.build, "build_model", no_build)
    eval_dir = str(tmp_path / "runs" / "eval")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        evaluate_all_cases.main(["--model_path", tiny_checkpoint[1], "--eval_dir", eval_dir,
                                 "DATASETS.ROOT_DIR", str(tmp_path / "typo")])
    assert not os.path.exists(tmp_path / "runs"), "a wrong data root must leave no evaluation folder"


def test_config_file_model_keys_are_applied_as_on_the_command_line(tiny_checkpoint, tmp_path):
    import evaluate_all_cases
    from utils.checkpoint import CheckpointError, load_checkpoint

    root, ckpt = tiny_checkpoint
    stored = load_checkpoint(ckpt)["config"]
    harmless = tmp_path / "embed.yml"
    harmless.write_text("MODEL:\n  EMBED_PARTS: [cls, proj]\nSOLVER:\n  MAX_EPOCHS: 99\n")
    cfg, changes, ignored = evaluate_all_cases.resolve_config(stored, str(harmless), [])
    assert list(cfg.MODEL.EMBED_PARTS) == ["cls", "proj"] and cfg.SOLVER.MAX_EPOCHS != 99
    assert [(k, s) for k, _, _, s in changes] == [("MODEL.EMBED_PARTS", f"--config_file {harmless}")]
    assert ignored == ["SOLVER.MAX_EPOCHS"]   # named in the log, not silently dropped
    same, via_opts, _ = evaluate_all_cases.resolve_config(stored, "", ["MODEL.EMBED_PARTS", "[cls, proj]"])
    assert list(same.MODEL.EMBED_PARTS) == ["cls", "proj"] and via_opts[0][3] == "the command line"

    wider = tmp_path / "wider.yml"
    wider.write_text("MODEL:\n  PRSD:\n    FEAT_DIM: 96\n")
    with pytest.raises(CheckpointError) as refused:
        evaluate_all_cases.main(["--model_path", ckpt, "--config_file", str(wider), "--eval_dir",
                                 str(tmp_path / "eval"), "DATASETS.ROOT_DIR", root])
    message = str(refused.value)
    assert "does not fit this model" in message and f"MODEL.PRSD.FEAT_DIM (--config_file {wider})" in message
    assert "to evaluate the model as trained" in message


def test_evaluation_of_a_sessionless_test_tracklet_does_not_crash(tiny_checkpoint, tiny_root_copy, tmp_path):
    root, (_, checkpoint) = tiny_root_copy, tiny_checkpoint
    query = os.path.join(root, CASE_FOLDERS[1], "query")
    pid = sorted(os.listdir(query))[0]
    break_session(os.path.join(query, pid, sorted(os.listdir(os.path.join(query, pid)))[0]))
    proc = run_cli("evaluate_all_cases.py", "--model_path", checkpoint, "--eval_dir", str(tmp_path / "eval"),
                   "DATASETS.ROOT_DIR", root, "DATALOADER.NUM_WORKERS", "0", timeout=600)
    assert_ok(proc)
    assert "aerial-unknown" in output_of(proc) and "mAP-3" in output_of(proc)
