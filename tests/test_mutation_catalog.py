"""The mutation catalog of bench/mutation_score.py stays usable while code moves: every entry's snippet
occurs exactly once in the project's non-test .py files (a stale entry is named by its test id)."""
import importlib.util
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "mutation_score.py")
_spec = importlib.util.spec_from_file_location("bench_mutation_score", BENCH)
mutation_score = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutation_score   # dataclasses look their module up there
_spec.loader.exec_module(mutation_score)


@pytest.fixture(scope="module")
def sources():
    return mutation_score.project_sources()


@pytest.mark.parametrize("mutant", mutation_score.CATALOG, ids=lambda m: m.id)
def test_snippet_occurs_exactly_once(mutant, sources):
    path, count = mutation_score.locate(mutant, sources)
    assert count == 1, (f"mutation catalog entry {mutant.id!r} is stale: its snippet occurs {count} times in the "
                        f"project's non-test .py files (needs exactly 1); update bench/mutation_score.py. "
                        f"Snippet: {mutant.snippet!r}")
    assert mutant.replacement != mutant.snippet


def test_catalog_ids_are_unique_and_there_are_at_least_40():
    ids = [m.id for m in mutation_score.CATALOG]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(ids) >= 40


def test_every_entry_runs_some_tests(sources):
    """The selection rule finds test files for each mutated module (a mutant with none would 'survive' unseen)."""
    tests = mutation_score.test_sources(mutation_score.tracked_files())
    empty = [m.id for m in mutation_score.CATALOG
             if (path := mutation_score.locate(m, sources)[0]) is not None
             and not mutation_score.select_tests(mutation_score.module_name(path), tests)]
    assert not empty, f"no test file selected for {empty}"


def test_selection_rule():
    texts = {"tests/test_a.py": "from utils.fileio import atomic_write\n",
             "tests/test_b.py": "from datasets import (\n    build,\n    detreidx,\n)\n",
             "tests/test_c.py": "import train\n",
             "tests/test_d.py": "subprocess.run([sys.executable, '-m', 'tools.ablate'])\n",
             "tests/test_e.py": "from utils.fileiox import nothing\nimport trainer\n",
             "tests/faults/test_f.py": "pass\n"}
    select = mutation_score.select_tests
    assert select("utils.fileio", texts) == ["tests/faults/test_f.py", "tests/test_a.py"]   # run/IO: faults too
    assert select("datasets.detreidx", texts) == ["tests/test_b.py"]
    assert select("datasets.detreidx.scan", texts) == []   # the sub-package named by 'from datasets import detreidx' only
    assert select("train", texts) == ["tests/faults/test_f.py", "tests/test_c.py"]
    assert select("tools.ablate", texts) == ["tests/test_d.py"]
    texts["tests/test_h.py"] = "from tests.test_a import helper\n"            # imports a chosen test file
    assert select("utils.fileio", texts) == ["tests/faults/test_f.py", "tests/test_a.py", "tests/test_h.py"]
    del texts["tests/test_h.py"]
    texts["tests/helpers/files.py"] = "from utils import fileio\n"               # a shared helper: never run,
    texts["tests/test_i.py"] = "from tests.helpers.files import snapshot\n"     # its importers are
    assert select("utils.fileio", texts) == ["tests/faults/test_f.py", "tests/test_a.py", "tests/test_i.py"]
    del texts["tests/helpers/files.py"], texts["tests/test_i.py"]
    texts["tests/test_g.py"] = "from solver import build_optimizer\n"
    assert select("solver.optimizer", texts, {"build_optimizer"}) == ["tests/test_g.py"]
    assert select("solver.optimizer", texts) == []
    assert mutation_score.reexported_names("solver.optimizer", {
        "solver/__init__.py": "from solver.optimizer import build_optimizer, parameter_groups  # x\n"}) == {
        "build_optimizer", "parameter_groups"}
    assert mutation_score.reexported_names("model.mgtm", {"model/__init__.py": '_EXPORTS = {"MGTM": "model.mgtm"}'}) == {
        "MGTM"}
    assert mutation_score.module_name("datasets/detreidx/scan.py") == "datasets.detreidx.scan"
    assert mutation_score.module_name("configs/__init__.py") == "configs"
