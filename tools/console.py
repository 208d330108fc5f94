"""Console commands of the installed project (``pip install -e .``; pyproject.toml ``[project.scripts]``).

Each runs, from any folder, the ``main`` of the command it names, exactly as the ``python ...`` form does
from the repository root (same options, same one-line errors through :func:`utils.cli.run_main`):

==============  =================================
sas-train       ``python train.py``
sas-evaluate    ``python evaluate_all_cases.py``
sas-search      ``python -m processor.search``
sas-export      ``python -m tools.export``
==============  =================================

Relative paths (config files, ``OUTPUT_DIR``, data roots) are relative to the current folder, as with
the ``python`` forms; a config file not found there is looked up under the project's ``configs/``.
When another installed package has the name of a project package (Hugging Face ``datasets``), the
command puts the project first on ``sys.path`` (:func:`processor.packages.put_project_first`).
"""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {  # console command -> module whose main() it runs
    "sas-train": "train",
    "sas-evaluate": "evaluate_all_cases",
    "sas-search": "processor.search",
    "sas-export": "tools.export",
}


def _packages_module():
    """processor/packages.py loaded by its path: it must work before any project package is imported."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "processor", "packages.py")
    spec = importlib.util.spec_from_file_location("_sas_vpreid_packages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_command(command: str, argv=None) -> None:
    """Run the ``main`` of ``command`` (a key of COMMANDS) through utils.cli.run_main."""
    packages = _packages_module()
    try:
        packages.put_project_first()
    except packages.PackageClashError as exc:
        sys.exit(f"error: {exc}")
    module = importlib.import_module(COMMANDS[command])
    from utils.cli import run_main

    if argv is None:
        run_main(module.main)
    else:
        run_main(lambda: module.main(list(argv)))


def train() -> None:
    run_command("sas-train")


def evaluate() -> None:
    run_command("sas-evaluate")


def search() -> None:
    run_command("sas-search")


def export() -> None:
    run_command("sas-export")
