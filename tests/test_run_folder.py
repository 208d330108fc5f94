"""The run-folder check before training (processor/run_folder.py): what counts as a run (a checkpoint, logged
metrics) and what is the leftover of a failed start (config, log, an empty metrics log), whatever the folder's
name holds. Runs of ``python train.py`` against a run folder are in test_train_cli.py."""
import os

import pytest

from processor.run_folder import RunFolderError, check_run_folder


def _files(folder, names):
    os.makedirs(folder, exist_ok=True)
    for name, text in names.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def test_config_log_and_an_empty_metrics_log_alone_are_a_failed_start_not_a_run(tmp_path):
    run = str(tmp_path / "run")
    _files(run, {"config.yaml": "MODEL: {}\n", "log.txt": "started\n", "metrics.jsonl": "", "notes.md": "mine\n"})
    leftovers = check_run_folder(run, resume="", overwrite=False)    # no RunFolderError
    assert sorted(os.path.basename(p) for p in leftovers) == ["config.yaml", "log.txt", "metrics.jsonl"]


def test_a_run_that_logged_metrics_but_saved_no_checkpoint_is_a_run(tmp_path):
    run = str(tmp_path / "run")
    _files(run, {"config.yaml": "MODEL: {}\n", "log.txt": "started\n", "metrics.jsonl": '{"kind": "step"}\n'})
    with pytest.raises(RunFolderError, match="metrics.jsonl"):
        check_run_folder(run, resume="", overwrite=False)
    assert check_run_folder(run, resume="auto", overwrite=False) == []


def test_run_folders_whose_names_hold_glob_characters_are_seen(tmp_path):
    run = str(tmp_path / "run[1]*?")
    _files(run, {"checkpoint_last.pth": "x", "log.txt": "started\n"})
    with pytest.raises(RunFolderError, match="checkpoint_last.pth"):
        check_run_folder(run, resume="", overwrite=False)
    assert sorted(os.path.basename(p) for p in check_run_folder(run, resume="", overwrite=True)) == [
        "checkpoint_last.pth", "log.txt"]
