"""One home for each name in model/, loss/, solver/ and utils/: a module imports a project name to use
it, never only to offer it to its own importers (a re-export left behind by a move, a package
``__init__`` that gathers its submodules' names), so every name has one import path. The datasets.detreidx
package maps its modules in its docstring and re-exports nothing."""
import ast
import os
import pkgutil
import tomllib

import pytest

from tests.helpers.paths import REPO_ROOT

CHECKED_PACKAGES = ("model", "loss", "solver", "utils")


def _project_packages() -> set:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return set(tomllib.load(f)["tool"]["setuptools"]["packages"])


def _modules():
    for package in CHECKED_PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(folder, name), REPO_ROOT)


def offered_names(source: str, project: set) -> list:
    """Names a module's top level imports from a project module but never uses, and the names it
    offers through ``__all__`` or a module ``__getattr__``."""
    tree = ast.parse(source)
    imported = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in project:
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    offered = [f"{name} (from {module})" for name, module in imported.items() if name not in used]
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            offered.append("__all__")
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            offered.append("module __getattr__")
    return offered


@pytest.mark.parametrize("path", list(_modules()))
def test_a_module_imports_project_names_only_to_use_them(path):
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        offered = offered_names(f.read(), _project_packages())
    assert not offered, f"{path} offers names it does not use: {offered}; import them from their own module"


def test_the_check_sees_a_re_export_and_a_used_import():
    project = {"utils"}
    assert offered_names("from utils.fileio import atomic_write\n", project) == ["atomic_write (from utils.fileio)"]
    assert offered_names("from utils.fileio import atomic_write\natomic_write('a', print)\n", project) == []
    assert offered_names("import os\n__all__ = ['x']\n", project) == ["__all__"]


def test_the_package_maps_every_module_and_re_exports_nothing():
    import datasets.detreidx as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    assert {"names", "frames", "records", "scan", "scan_cache", "splits", "dataset", "__main__"} <= modules
    # Attributes of the package are its submodules (set on import), never names taken from them.
    assert {name for name in vars(package) if not name.startswith("__")} <= modules
    assert all(f"``{module}``" in package.__doc__ for module in modules)
