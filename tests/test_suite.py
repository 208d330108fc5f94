"""The test suite's own rules (tests/README.md): a test file is named after what it tests, no test file imports
another, each fixture has one definition, every helper is in tests/helpers/ under one naming style, and a test
that starts a command line in a fresh process carries the slow mark, so that ``-m "not slow"`` stays quick."""
import ast
import glob
import os
import re
import tomllib

from tests.helpers.paths import REPO_ROOT

TESTS = os.path.join(REPO_ROOT, "tests")
# Files named after a rule of the design that spans the code rather than after one module
# (test_mutation_catalog.py: every snippet of bench/mutation_score.py's catalog occurs once in the code).
RULE_FILES = {"test_docs.py", "test_one_home.py", "test_packaging.py", "test_suite.py", "test_mutation_catalog.py"}
# Commands run end to end in ``test_<command>_cli.py``: training, evaluation and the DetReIDX scanner's statistics.
COMMANDS = {"train", "evaluate", "detreidx"}


def all_test_files() -> list[str]:
    """Paths of every test file, relative to the repository."""
    return sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(TESTS, "**", "test_*.py"),
                                                                   recursive=True))


def parsed(path: str, root: str = REPO_ROOT) -> ast.Module:
    with open(os.path.join(root, path), encoding="utf-8") as f:
        return ast.parse(f.read())


def project_modules() -> set[str]:
    """Every dotted module and package of the project (``pkg.module``, ``pkg.sub.module``, a top-level module)."""
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        setup = tomllib.load(f)["tool"]["setuptools"]
    found = set(setup["py-modules"]) | {"bench"}
    for package in setup["packages"] + ["bench"]:
        found.add(package)
        folder = os.path.join(REPO_ROOT, *package.split("."))
        found |= {f"{package}.{name[:-3]}" for name in os.listdir(folder)
                  if name.endswith(".py") and name != "__init__.py"}
    return found


def names_a_module(stem: str, modules: set[str]) -> bool:
    """``stem`` (a test file name without ``test_`` and ``.py``) is a module or package, alone or after (the
    last parts of) its package: ``memory``, ``utils_cli``, ``detreidx_scan``, ``configs``, ``bench_gpu_step``."""
    for dotted in modules:
        parts = dotted.split(".")
        if stem == parts[-1] or any(stem == "_".join(parts[i:]) for i in range(len(parts) - 1)):
            return True
    return False


def test_every_test_file_is_named_after_what_it_tests():
    modules = project_modules()
    astray = []
    for path in all_test_files():
        name = os.path.basename(path)
        stem = name[len("test_"):-len(".py")]
        if path.startswith(os.path.join("tests", "faults", "")) or name in RULE_FILES:
            continue   # the fault campaign is named after the faults it injects
        if stem.endswith("_cli") and stem[:-len("_cli")] in COMMANDS:
            continue
        if not names_a_module(stem, modules):
            astray.append(path)
    assert astray == [], f"not named after a module, a package or a command (tests/README.md): {astray}"


def test_the_naming_check_knows_a_module_from_a_piece_of_work():
    # made-up modules (real ones here would make bench/mutation_score.py pick this file for their mutants)
    modules = {"tools_x.cli", "data_x.reid.scan", "nets_x.memory", "setup_x", "bench.clock"}
    for stem in ("cli", "tools_x_cli", "reid_scan", "data_x_reid_scan", "memory", "setup_x", "bench_clock"):
        assert names_a_module(stem, modules), stem
    for stem in ("memory_authors", "authors_defaults", "runtime_cli", "scan_cache", "tools_x"):
        assert not names_a_module(stem, modules), stem


def test_no_test_file_imports_another_test_file():
    found = []
    for path in all_test_files() + ["tests/conftest.py"] + sorted(
            os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(TESTS, "helpers", "*.py"))):
        for node in ast.walk(parsed(path)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path}:{node.lineno} {n}" for n in names if re.match(r"tests(\.\w+)*\.test_", n)]
    assert found == [], "shared code goes to tests/helpers/ (or a fixture to tests/conftest.py): " + ", ".join(found)


def fixture_definitions() -> dict[str, list[str]]:
    """{fixture name: the files that define it}, over conftest.py and every test file."""
    found: dict[str, list[str]] = {}
    for path in ["tests/conftest.py"] + all_test_files():
        for node in parsed(path).body:
            if isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list):
                found.setdefault(node.name, []).append(path)
    return found


def test_each_fixture_is_defined_once():
    twice = {name: paths for name, paths in fixture_definitions().items() if len(paths) > 1}
    assert twice == {}, "one definition per fixture; a shared one lives in tests/conftest.py"


def test_helpers_are_functions_and_constants_under_one_naming_style():
    """In tests/helpers/: builders are make_*, constants UPPER_CASE, nothing private, no fixtures, no tests."""
    wrong = []
    for path in sorted(glob.glob(os.path.join(TESTS, "helpers", "*.py"))):
        rel = os.path.relpath(path, REPO_ROOT)
        for node in parsed(rel).body:
            if isinstance(node, ast.FunctionDef):
                is_fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
                if node.name.startswith(("_", "test_")) or is_fixture:
                    wrong.append(f"{rel}: {node.name}")
                elif node.name.startswith(("build_", "create_", "tiny_")):
                    wrong.append(f"{rel}: {node.name} (a builder is make_*)")
            elif isinstance(node, ast.Assign):
                wrong += [f"{rel}: {t.id}" for t in node.targets if isinstance(t, ast.Name) and not t.id.isupper()]
    assert wrong == []


def starts_a_command_line(call: ast.Call) -> bool:
    """``run_cli(...)``, or ``subprocess.run/Popen([sys.executable, ARG, ...])`` with ARG other than ``-c`` (a
    project script or ``-m`` module, not an inline snippet of a few lines)."""
    func = ast.unparse(call.func)
    if func == "run_cli":
        return True
    if func in ("subprocess.run", "subprocess.Popen") and call.args and isinstance(call.args[0], ast.List):
        items = call.args[0].elts
        return (len(items) > 1 and ast.unparse(items[0]) == "sys.executable"
                and not (isinstance(items[1], ast.Constant) and items[1].value == "-c"))
    return False


def calls_in(node: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


def module_marks(tree: ast.Module) -> str:
    return " ".join(ast.unparse(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets))


def unmarked_command_runs(path: str, root: str = REPO_ROOT) -> list[str]:
    """Tests of ``path`` that start a command line in a fresh process (starts_a_command_line), directly or through
    a helper function of the same file, without the slow mark (on them or on their module)."""
    tree = parsed(path, root)
    if "slow" in module_marks(tree):
        return []
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    launches = {n.name: any(isinstance(c, ast.Call) and starts_a_command_line(c) for c in ast.walk(n))
                for n in functions}
    helpers = {name for name, does in launches.items() if does and not name.startswith("test_")}
    return [f"{path}::{n.name}" for n in functions
            if n.name.startswith("test_") and not any("slow" in ast.unparse(d) for d in n.decorator_list)
            and (launches[n.name] or helpers & calls_in(n))]


def test_tests_that_start_a_command_line_are_marked_slow():
    unmarked = [name for path in all_test_files() for name in unmarked_command_runs(path)]
    assert unmarked == [], "mark them @pytest.mark.slow (tests/README.md): " + ", ".join(unmarked)


def test_the_slow_check_sees_a_command_run_and_its_mark(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n\ndef start(*a):\n    return run_cli(*a)\n\n\n"
        "def test_direct():\n    run_cli('train.py')\n\n\n"
        "def test_through_a_helper():\n    start('train.py')\n\n\n"
        "@pytest.mark.slow\ndef test_marked():\n    run_cli('train.py')\n\n\n"
        "def test_in_process():\n    assert 1\n")
    assert unmarked_command_runs("tests/test_x.py", str(tmp_path)) == ["tests/test_x.py::test_direct",
                                                                       "tests/test_x.py::test_through_a_helper"]
    (tmp_path / "tests" / "test_x.py").write_text("import pytest\n\npytestmark = pytest.mark.slow\n\n\n"
                                                  "def test_direct():\n    run_cli('train.py')\n")
    assert unmarked_command_runs("tests/test_x.py", str(tmp_path)) == []


def test_the_slow_marker_is_registered_and_strict():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        options = tomllib.load(f)["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"].split()
    assert any(marker.startswith("slow:") for marker in options["markers"])


def test_the_readme_names_every_fixture_and_helper_module():
    with open(os.path.join(TESTS, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    helpers = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(TESTS, "helpers", "*.py"))
                     if not p.endswith("__init__.py"))
    fixtures = sorted(name for name, paths in fixture_definitions().items() if paths == ["tests/conftest.py"])
    missing = [f"helpers/{h}.py" for h in helpers if f"helpers/{h}.py" not in readme]
    missing += [f for f in fixtures if f"`{f}`" not in readme]
    assert missing == []
