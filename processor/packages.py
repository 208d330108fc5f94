"""The project's top-level packages, and what happens when another installed package has one of their names.

The top-level folders (configs, datasets, model, ...) are fixed by the design, and several are generic
names: Hugging Face ``datasets`` is installed in many ML environments. After ``pip install -e .`` the
project is found by an import hook that Python consults *after* site-packages, so an installed package
of the same name wins: ``import datasets`` runs the other package, and the project's ``datasets.build``
is either grafted onto it by setuptools' hook (two packages mixed under one name) or not found at all
(an obscure ``No module named 'datasets.build'``).

* :func:`check_packages` (run when :mod:`processor.inference` is imported, i.e. by the Python API)
  raises :class:`PackageClashError`, one message naming the package, both locations and the fixes.
* :func:`put_project_first` (run by the ``sas-*`` console commands, :mod:`tools.console`) puts the
  project first on ``sys.path`` when there is a clash: nothing else runs in those processes, so the
  other package is not needed there.

Only the standard library is used here: this module must work before any project package is imported.
"""
from __future__ import annotations

import importlib.util
import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_PACKAGES = ("configs", "datasets", "model", "loss", "processor", "solver", "utils", "tools")


class PackageClashError(ImportError):
    """A project package name resolves to another installed package; the message names both and the fixes."""


def _location(name: str) -> str | None:
    """The folder ``name`` is (or would be) imported from, or None when it cannot be found at all."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None and module is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        origin = spec.origin
        if origin is None and spec.submodule_search_locations:  # a namespace package: its first folder
            return os.path.realpath(list(spec.submodule_search_locations)[0])
    if origin is None:
        return None
    return os.path.realpath(os.path.dirname(origin) if os.path.basename(origin) == "__init__.py" else origin)


def shadowed_packages(root: str = PROJECT_ROOT, names=PROJECT_PACKAGES) -> dict[str, str]:
    """{name: where it is imported from} for each project package that resolves outside ``root``."""
    clashes = {}
    for name in names:
        expected = os.path.realpath(os.path.join(root, name))
        found = _location(name)
        if found is not None and found != expected:
            clashes[name] = found
    return clashes


def clash_message(clashes: dict[str, str], root: str = PROJECT_ROOT) -> str:
    """One line: which package shadows which project folder, and how to fix it."""
    name, found = next(iter(clashes.items()))
    others = f" (also: {', '.join(sorted(clashes)[1:])})" if len(clashes) > 1 else ""
    example = " (Hugging Face `datasets` is a common one)" if name == "datasets" else ""
    return (f"'{name}' is imported from {found}, not from this project's {os.path.join(root, name)}{others}: "
            f"another installed package of that name{example} shadows the project's folder. Run from {root}, "
            f"or set PYTHONPATH={root}, or use an environment without that package; "
            f"the sas-train/sas-evaluate/sas-search/sas-export commands are not affected.")


def check_packages(root: str = PROJECT_ROOT) -> None:
    """Raise PackageClashError when a project package name resolves to another installed package."""
    clashes = shadowed_packages(root)
    if clashes:
        raise PackageClashError(clash_message(clashes, root))


def put_project_first(root: str = PROJECT_ROOT) -> bool:
    """For the project's own command processes: with a clash, put ``root`` first on sys.path (returns True).

    A package already imported from elsewhere cannot be replaced: that is a PackageClashError.
    """
    clashes = shadowed_packages(root)
    if not clashes:
        return False
    imported = {name: found for name, found in clashes.items() if name in sys.modules}
    if imported:
        raise PackageClashError(clash_message(imported, root))
    sys.path.insert(0, root)
    importlib.invalidate_caches()
    remaining = shadowed_packages(root)
    if remaining:
        raise PackageClashError(clash_message(remaining, root))
    return True
