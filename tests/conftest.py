"""The suite's shared pytest fixtures (one definition each) and its session setup: nothing may wait on a model
hub, tests run from the repository root, hypothesis runs derandomised. Plain helper functions and constants
are in tests/helpers/; tests/README.md says which to use where."""
import dataclasses
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

from tests.helpers.checkpoints import make_tiny_checkpoint  # noqa: E402
from tests.helpers.cli import assert_ok, output_of, run_cli  # noqa: E402
from tests.helpers.data import TINY_DATA, make_query_gallery_halves, make_tiny_root  # noqa: E402
from tests.helpers.paths import DEMO_CONFIG  # noqa: E402
from tests.helpers.training import make_tiny_opts  # noqa: E402

# Hypothesis keeps a folder of its own (constants, Unicode tables), never in the repository. Derandomised and
# without an example database, so that a failure reproduces everywhere; no deadline on a busy machine.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "sas_vpreid_hypothesis"))
settings.register_profile("sas", max_examples=150, deadline=None, derandomize=True, database=None)
settings.load_profile("sas")


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """The tiny synthetic DetReIDX root (helpers.data.TINY_DATA: 6 train ids, 3 test ids, all three cases),
    generated once per session. Shared: read it, never change it (take tiny_root_copy to change files)."""
    return make_tiny_root(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session", params=["int", "S"])
def styled_root(request, tmp_path_factory):
    """tiny_root in each of the two session-name styles of the authors' frame names (session token ``1`` or
    ``S1``). Shared: never change it."""
    config = dataclasses.replace(TINY_DATA, session_style=request.param)
    return make_tiny_root(tmp_path_factory.mktemp(f"style_{request.param}"), config)


@pytest.fixture
def tiny_root_copy(tiny_root, tmp_path):
    """A private copy of tiny_root that the test may damage."""
    copy = str(tmp_path / "xfd")
    shutil.copytree(tiny_root, copy)
    return copy


@pytest.fixture(scope="session")
def train_data_root(tmp_path_factory):
    """The data of the tiny training runs (helpers.training.make_tiny_opts: 8 ids, 2 of them for validation),
    generated once per session the way train.py generates it. Shared: never change it."""
    from configs import load_config
    from datasets.build import build_dataset

    root = str(tmp_path_factory.mktemp("train_data") / "xfd")
    build_dataset(load_config(DEMO_CONFIG, make_tiny_opts(root, "unused")))
    return root


# ----------------------------------------------------------------------------- models and runs
@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_root, tmp_path_factory):
    """(data root, checkpoint path): the demo model on tiny_root, random weights (helpers.checkpoints).
    Evaluations without --eval_dir write next to it; tests that change the data use their own copy."""
    return tiny_root, make_tiny_checkpoint(tiny_root, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def search_folders(tiny_checkpoint, tmp_path_factory):
    """(checkpoint, query dir, gallery dir, query names): plain folders for processor.search, the true match of
    query person<i> being gallery clip<i>.d (helpers.data.make_query_gallery_halves). Shared: never change them."""
    root, ckpt = tiny_checkpoint
    query, gallery, names = make_query_gallery_halves(root, str(tmp_path_factory.mktemp("search") / "plain"))
    return ckpt, query, gallery, names


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(data root, run folder, train.py output, the run's overrides) of one tiny run of ``python train.py``
    (2 epochs, validation every epoch, test evaluation at the end). Shared: tests that change a run copy it."""
    base = tmp_path_factory.mktemp("trained_run")
    data_root, run_dir = str(base / "data" / "xfd"), str(base / "run")
    opts = make_tiny_opts(data_root, run_dir, epochs=2, **{"SOLVER.EVAL_PERIOD": "1", "SOLVER.LOG_PERIOD": "100",
                                                            "TEST.EVAL_AFTER_TRAINING": "True"})
    proc = run_cli("train.py", "--config_file", DEMO_CONFIG, *opts)
    assert_ok(proc)
    return data_root, run_dir, output_of(proc), opts


# ----------------------------------------------------------------------------- spies
@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts clips through the one encoder call of the tracklet paths (processor.encoding.forward_clips,
    called by encode_tracklets: evaluation, FeatureExtractor, search)."""
    from processor import encoding

    calls = {"clips": 0}
    original = encoding.forward_clips

    def counting(model, frames, *args, **kwargs):
        calls["clips"] += frames.shape[0]
        return original(model, frames, *args, **kwargs)

    monkeypatch.setattr(encoding, "forward_clips", counting)
    return calls
