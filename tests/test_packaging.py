"""pyproject.toml: after the README's install command (`pip install -e .`) the API and the sas-* commands work
from any folder, and a package that shadows a project package (Hugging Face `datasets`) gets a clear message.

The install is the real one, faster: `pip install --no-deps --no-build-isolation --no-index -e ROOT` into a
fresh virtual environment that sees this environment's packages (torch, pip, setuptools) through a .pth
file instead of installing them again. It writes nothing into the repository.
"""
import importlib
import os
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

from processor import packages
from tests.helpers.paths import REPO_ROOT

PYPROJECT = os.path.join(REPO_ROOT, "pyproject.toml")
COMMANDS = ("sas-train", "sas-evaluate", "sas-search", "sas-export")


def read_pyproject() -> dict:
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def test_pyproject_lists_every_top_level_package_and_the_yaml_configs():
    """A new package or sub-package must be listed (else the installed API misses it); the clash check must
    know every top-level one."""
    setuptools = read_pyproject()["tool"]["setuptools"]
    on_disk = {name for name in os.listdir(REPO_ROOT)
               if os.path.isfile(os.path.join(REPO_ROOT, name, "__init__.py")) and name not in ("tests", "bench")}
    with_sub_packages = {os.path.relpath(folder, REPO_ROOT).replace(os.sep, ".")
                         for top in on_disk for folder, _, files in os.walk(os.path.join(REPO_ROOT, top))
                         if "__init__.py" in files}
    assert set(setuptools["packages"]) == with_sub_packages
    assert {name for name in setuptools["packages"] if "." not in name} == on_disk == set(packages.PROJECT_PACKAGES)
    assert setuptools["package-data"]["configs"] == ["*.yml", "ablations/*.yml"]
    assert sorted(setuptools["py-modules"]) == ["evaluate_all_cases", "train"]


def test_console_commands_wrap_the_mains():
    from tools import console

    scripts = read_pyproject()["project"]["scripts"]
    assert sorted(scripts) == sorted(COMMANDS) == sorted(console.COMMANDS)
    for command, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert callable(importlib.import_module(console.COMMANDS[command]).main)


def test_console_command_runs_main_with_one_line_errors(tmp_path, capsys):
    from tools import console

    with pytest.raises(SystemExit) as exit_info:
        console.run_command("sas-export", ["--help"])
    assert exit_info.value.code == 0 and "--model_path" in capsys.readouterr().out
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(SystemExit, match=r"^error: .*missing\.pth"):
        console.run_command("sas-export", ["--model_path", missing, "--format", "torchscript"])


def test_shadowed_package_is_named_with_the_fix(tmp_path, monkeypatch):
    stub = tmp_path / "site" / "datasets"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""a stub standing in for Hugging Face datasets"""\n')
    # Another project root whose `datasets` folder is not the one Python finds.
    other_root = tmp_path / "project"
    assert packages.shadowed_packages(str(other_root), ("datasets",)) == {"datasets": os.path.realpath(REPO_ROOT + "/datasets")}
    monkeypatch.delitem(sys.modules, "datasets")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    clashes = packages.shadowed_packages()
    assert clashes == {"datasets": str(stub.resolve())}
    with pytest.raises(packages.PackageClashError) as error:
        packages.check_packages()
    message = str(error.value)
    assert "\n" not in message and str(stub.resolve()) in message and "Hugging Face" in message
    assert f"PYTHONPATH={packages.PROJECT_ROOT}" in message


def run(args, cwd, env=None, check=True):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | (env or {})
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, its site-packages, an empty folder outside the repository) after `pip install -e ROOT` there."""
    pytest.importorskip("setuptools", reason="installing offline without build isolation needs setuptools")
    base = tmp_path_factory.mktemp("install")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(base))
    python = str(venv / "bin" / "python")
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=str(base)).stdout.strip()
    # This environment's package folders, in this process's order (including any that .pth files added).
    here = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages(),
            *(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))]
    with open(os.path.join(purelib, "_this_environment.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(p for p in here if os.path.isdir(p))) + "\n")
    before = set(os.listdir(REPO_ROOT))
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
         "--disable-pip-version-check", "-e", REPO_ROOT], cwd=str(base))
    new = set(os.listdir(REPO_ROOT)) - before
    assert not [name for name in new if name in ("build", "dist") or name.endswith(".egg-info")]  # nothing left behind
    outside = base / "elsewhere"
    outside.mkdir()
    return venv, purelib, str(outside)


@pytest.mark.slow
def test_api_and_commands_work_from_another_folder_after_install(installed):
    venv, _, outside = installed
    code = ("import os, processor.inference as api, configs, train, evaluate_all_cases\n"
            "from processor.inference import FeatureExtractor, load_clips\n"
            "from importlib.metadata import entry_points\n"
            "print(os.path.dirname(os.path.dirname(api.__file__)))\n"
            "print(configs.resolve_config_path('demo.yml'))\n"
            "print(sorted(ep.name for ep in entry_points(group='console_scripts') if ep.name.startswith('sas-')))\n")
    root, demo, commands = run([str(venv / "bin" / "python"), "-c", code], cwd=outside).stdout.strip().splitlines()
    assert os.path.realpath(root) == os.path.realpath(REPO_ROOT)
    assert os.path.isfile(demo) and os.path.realpath(demo) == os.path.realpath(os.path.join(REPO_ROOT, "configs", "demo.yml"))
    assert commands == str(sorted(COMMANDS))
    proc = run([str(venv / "bin" / "sas-train"), "--help"], cwd=outside)
    assert "--config_file" in proc.stdout


@pytest.mark.slow
def test_an_installed_datasets_package_gets_a_clear_message(installed, tmp_path):
    """Hugging Face `datasets` installed next to the project: the API names it (before: the stub was imported
    as `datasets`, with the project's submodules grafted onto it by setuptools' editable hook), the sas-*
    commands still work, and the PYTHONPATH fix the message gives works."""
    venv, purelib, outside = installed
    stub = os.path.join(purelib, "datasets")
    os.makedirs(stub)
    try:
        with open(os.path.join(stub, "__init__.py"), "w") as f:
            f.write('"""a stub standing in for Hugging Face datasets"""\n')
        python = str(venv / "bin" / "python")
        proc = run([python, "-c", "from processor.inference import FeatureExtractor"], cwd=outside, check=False)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("processor.packages.PackageClashError: 'datasets' is imported from "), proc.stderr
        assert os.path.realpath(stub) in last and f"PYTHONPATH={packages.PROJECT_ROOT}" in last
        assert "No module named" not in proc.stderr
        # The project's own commands put the project first: search imports processor.inference and datasets.
        proc = run([str(venv / "bin" / "sas-search"), "--help"], cwd=outside)
        assert "--gallery" in proc.stdout
        # The fix the message gives.
        code = "import datasets.build, processor.inference; print(datasets.__file__)"
        proc = run([python, "-c", code], cwd=outside, env={"PYTHONPATH": packages.PROJECT_ROOT})
        assert os.path.realpath(proc.stdout.strip()) == os.path.realpath(os.path.join(REPO_ROOT, "datasets", "__init__.py"))
    finally:
        os.remove(os.path.join(stub, "__init__.py"))
        os.rmdir(stub)


def test_the_wheel_holds_the_packages_and_the_yaml_configs(tmp_path):
    """A non-editable install gets the configs too (built from a copy: a build writes build/ and egg-info)."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")
    import shutil

    source = tmp_path / "source"
    keep = {"pyproject.toml", "README.md", "requirements.txt", "train.py", "evaluate_all_cases.py", *packages.PROJECT_PACKAGES}
    source.mkdir()
    for name in keep:
        path = os.path.join(REPO_ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(path, source / name)
    out = tmp_path / "dist"
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(out)!r})"], cwd=str(source))
    wheel, = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {os.path.relpath(os.path.join(d, f), REPO_ROOT) for d, _, files in os.walk(os.path.join(REPO_ROOT, "configs"))
               for f in files if f.endswith(".yml")}
    assert configs and configs <= names
    assert {"train.py", "evaluate_all_cases.py", "processor/inference.py", "datasets/build.py", "tools/console.py",
            "datasets/detreidx/dataset.py", "datasets/detreidx/__main__.py"} <= names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{command} = tools.console:" in text for command in COMMANDS)
