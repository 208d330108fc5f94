"""README.md and docs/*.md cite only what exists, and the README's commands are the ones CI runs.

From every code span and code block of those files the checks take: repository paths
(`processor/step.py`, `configs/tiny.yml`, `tests/faults/`; a bare `tiny.yml` is a file under configs/),
tests (`tests/test_x.py::test_y`, then `::test_z` for another test of the same file), modules and the
names in them (`python -m tools.export`, `utils.metrics.ChunkedDistance`,
`from processor.inference import FeatureExtractor`) and config keys (`SOLVER.BASE_LR`). Every relative
markdown link must reach a file, and its `#anchor` a heading there. Each check lists everything it finds
missing in one failure, so a file or test that moved shows up with every place that still cites it.
"""
from __future__ import annotations

import ast
import functools
import os
import re
from dataclasses import dataclass

from tests.helpers.paths import REPO_ROOT

README = "README.md"
DOCS_DIR = "docs"
README_MAX_LINES = 200
# Top-level names of the repository: a cited path that starts with one of them must exist. Paths that
# start elsewhere (`outputs/demo/`, `data/`, `pretrained/`, `DATA/train/`) name what a run or a user makes.
REPO_FOLDERS = ("bench", "configs", "datasets", "docs", "loss", "model", "processor", "solver", "tests", "tools",
                "utils", ".ci")
REPO_FILES = ("README.md", "train.py", "evaluate_all_cases.py", "pyproject.toml", "requirements.txt")
PACKAGES = ("bench", "configs", "datasets", "loss", "model", "processor", "solver", "tools", "utils")
CONFIG_GROUPS = ("MODEL", "INPUT", "DATASETS", "DATALOADER", "SOLVER", "LOSS", "TEST")

FENCED_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
TOKEN_SPLIT = re.compile(r"[\s,;()\[\]|=]+")
MODULE_RUN = re.compile(r"(?:python3?|torchrun)\b[^\n`]*?\s-m\s+([A-Za-z_][\w.]*)")
FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+([A-Za-z_][\w.]*)[ \t]+import[ \t]+([\w \t,]+)", re.M)
DOTTED_NAME = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+$")
# A dotted token that ends like a file name (`model.onnx`, `features.npz`) is a file, not a module.
FILE_SUFFIXES = ("csv", "jpg", "json", "npz", "onnx", "pkl", "png", "pt", "pth", "py", "tar", "txt", "yaml", "yml")
CONFIG_KEY = re.compile(rf"^(?:{'|'.join(CONFIG_GROUPS)})(?:\.[A-Z][A-Z0-9_]*)+$")


@dataclass(frozen=True)
class Citations:
    """What one markdown text cites; each entry is (what is cited, where: 'FILE' or 'FILE: context')."""

    paths: tuple[str, ...]
    config_files: tuple[str, ...]
    tests: tuple[tuple[str, str], ...]  # (test file as written, test function)
    modules: tuple[str, ...]  # modules run with `python -m`
    names: tuple[str, ...]  # dotted module[.name[.attribute]] references
    keys: tuple[str, ...]
    links: tuple[str, ...]


def code_spans(text: str) -> list[str]:
    """The code of a markdown text in document order: fenced blocks whole, inline `spans` one by one."""
    found = [(m.start(), m.group(1)) for m in FENCED_BLOCK.finditer(text)]
    prose = FENCED_BLOCK.sub(lambda m: " " * len(m.group(0)), text)
    found += [(m.start(), m.group(1)) for m in INLINE_CODE.finditer(prose)]
    return [code for _, code in sorted(found)]


def prose_of(text: str) -> str:
    """The text without its code (fenced blocks and inline spans), where links and headings live."""
    return INLINE_CODE.sub(" ", FENCED_BLOCK.sub(" ", text))


def clean(token: str) -> str:
    return token.lstrip("'\"<>{}").rstrip("'\".,:…")


def cited(text: str) -> Citations:
    paths, config_files, tests, modules, names, keys = [], [], [], [], [], []
    last_test_file = ""
    for code in code_spans(text):
        modules += MODULE_RUN.findall(code)
        for module, imported in FROM_IMPORT.findall(code):
            if module.split(".")[0] in PACKAGES:
                names += [f"{module}.{name.strip()}" for name in imported.split(",") if name.strip()]
        for token in map(clean, TOKEN_SPLIT.split(code)):
            if not token:
                continue
            if "::" in token:
                test_file, _, test_name = token.partition("::")
                if test_file.endswith(".py"):
                    last_test_file = test_file
                elif not (test_file == "" and test_name.startswith("test")):
                    continue
                tests.append((last_test_file, test_name))
            elif re.search(r"[<>{}$]", token):
                continue  # a placeholder (`DATA/<PID>/`, `checkpoint_epoch{20,40}.pth`), not a file
            elif token.split("/")[0] in REPO_FOLDERS and "/" in token or token in REPO_FILES:
                paths.append(token)
            elif token.endswith(".yml"):
                config_files.append(token)
            elif re.fullmatch(r"test_\w+\.py", token):
                paths.append(token)
            elif DOTTED_NAME.match(token) and token.rsplit(".", 1)[1] not in FILE_SUFFIXES:
                names.append(token)
            elif CONFIG_KEY.match(token):
                keys.append(token)
    links = [target for target in LINK.findall(prose_of(text)) if not re.match(r"[a-z]+:", target)]
    return Citations(*(tuple(x) for x in (paths, config_files, tests, modules, names, keys, links)))


def layout_paths(readme: str) -> list[str]:
    """The files and folders the README's Layout block names, each under the folder of its line:
    `processor/   step.py (TrainStep), encoding.py` cites processor/step.py and processor/encoding.py
    (text in parentheses describes, it does not name)."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = FENCED_BLOCK.search(section).group(1)
    block = re.sub(r"\([^)]*\)", lambda m: "\n " * m.group(0).count("\n") + " ", block)  # keeps the lines
    paths, folder = [], None
    for line in block.splitlines():
        if line and not line[0].isspace():
            heads = re.match(r"^([\w.]+/(?:,\s*[\w.]+/)*)", line).group(1)
            folders = heads.split(",")
            folder = folders[0].strip() if len(folders) == 1 else None  # `loss/, solver/`: which one is unclear
            line = line[len(heads):]
        if folder:
            paths += [folder + name for name in re.findall(r"(?<![\w./-])([\w-]+(?:\.(?:py|sh|yml)|/))(?![\w/])", line)]
    return paths


def documents() -> dict[str, str]:
    """README.md and every docs/*.md, by path relative to the repository root."""
    names = [README] + sorted(os.path.join(DOCS_DIR, n) for n in os.listdir(os.path.join(REPO_ROOT, DOCS_DIR))
                              if n.endswith(".md"))
    texts = {}
    for name in names:
        with open(os.path.join(REPO_ROOT, name), encoding="utf-8") as f:
            texts[name] = f.read()
    return texts


def all_citations() -> list[tuple[str, Citations]]:
    return [(name, cited(text)) for name, text in documents().items()]


def repo_files(top: str, basename: str) -> list[str]:
    """Files named `basename` anywhere under the folder `top` of the repository."""
    return [os.path.join(folder, basename) for folder, _, files in os.walk(os.path.join(REPO_ROOT, top))
            if basename in files]


def path_exists(path: str) -> bool:
    if path in REPO_FILES:
        return os.path.isfile(os.path.join(REPO_ROOT, path))
    if "/" not in path:  # a bare test file name: anywhere under tests/
        return bool(repo_files("tests", path))
    full = os.path.join(REPO_ROOT, path)
    if "*" in path:
        import glob
        return bool(glob.glob(full))
    return os.path.exists(full)


def report(missing: list[str], what: str) -> str:
    missing = list(dict.fromkeys(missing))  # each place once
    return f"{len(missing)} cited {what} not found:\n  " + "\n  ".join(missing)


# -------------------------------------------------------------------------------- modules and names

def module_file(module: str) -> str | None:
    """The source file of a project module (a package's __init__.py), or None."""
    base = os.path.join(REPO_ROOT, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def top_level_names(path: str) -> dict[str, ast.AST]:
    """Names a module defines or imports at its top level (also inside if/try), each with its node."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names: dict[str, ast.AST] = {}

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names[node.name] = node
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            names[name.id] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names[node.target.id] = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    names[(alias.asname or alias.name).split(".")[0]] = node
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(tree.body)
    return names


def class_members(node: ast.ClassDef) -> set[str]:
    members = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            members.add(item.name)
        elif isinstance(item, ast.Assign):
            members |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.add(item.target.id)
    return members


def dotted_name_exists(dotted: str) -> bool:
    """`pkg.module`, `pkg.module.Name` or `pkg.module.Class.member`: the longest prefix that is a module,
    then a name defined there, then a member of that class."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:split]))
        if path is None:
            continue
        rest = parts[split:]
        if not rest:
            return True
        node = top_level_names(path).get(rest[0])
        if node is None:
            # A submodule of a package need not be imported by its __init__.py.
            return False
        if len(rest) == 1 or not isinstance(node, ast.ClassDef):
            return True  # a name imported from elsewhere or a module attribute: its own module is checked there
        return rest[1] in class_members(node)
    return False


def runnable_module_exists(module: str) -> bool:
    base = os.path.join(REPO_ROOT, *module.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__main__.py"))


# -------------------------------------------------------------------------------- tests

def resolve_test_file(cited_file: str) -> str | None:
    if "/" in cited_file:
        full = os.path.join(REPO_ROOT, cited_file)
        return full if os.path.isfile(full) else None
    matches = repo_files("tests", cited_file)
    return matches[0] if len(matches) == 1 else None


def defines_test(path: str, name: str) -> bool:
    with open(path, encoding="utf-8") as f:
        return re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", f.read(), re.M) is not None


# -------------------------------------------------------------------------------- anchors

def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a markdown text's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading numbered -1, -2, ..."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for _, title in HEADING.findall(FENCED_BLOCK.sub(" ", text)):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


# -------------------------------------------------------------------------------- the checks

def test_cited_repository_paths_exist():
    missing = [f"{doc}: {path}" for doc, c in all_citations() for path in c.paths if not path_exists(path)]
    missing += [f"{README} (Layout): {path}" for path in layout_paths(documents()[README]) if not path_exists(path)]
    missing += [f"{doc}: {name} (under configs/)" for doc, c in all_citations() for name in c.config_files
                if not (os.path.isfile(os.path.join(REPO_ROOT, "configs", name))
                        or repo_files("configs", os.path.basename(name)))]
    assert not missing, report(missing, "files and folders")


def test_cited_tests_exist():
    missing = []
    for doc, c in all_citations():
        for test_file, name in c.tests:
            path = resolve_test_file(test_file) if test_file else None
            if path is None:
                missing.append(f"{doc}: {test_file or '(no file before it)'}::{name} (no such test file)")
            elif not defines_test(path, name):
                missing.append(f"{doc}: {test_file}::{name}")
    assert not missing, report(missing, "tests")


def test_cited_modules_and_their_names_exist():
    missing = [f"{doc}: python -m {m}" for doc, c in all_citations() for m in c.modules
               if m.split(".")[0] in PACKAGES and not runnable_module_exists(m)]
    missing += [f"{doc}: {name}" for doc, c in all_citations() for name in c.names if not dotted_name_exists(name)]
    assert not missing, report(missing, "modules and names")


def test_cited_config_keys_exist():
    from configs.defaults import get_defaults

    defaults = get_defaults()

    def has(key: str) -> bool:
        node = defaults
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                return False
            node = node[part]
        return True

    missing = [f"{doc}: {key}" for doc, c in all_citations() for key in c.keys if not has(key)]
    assert not missing, report(missing, "config keys")


def test_links_between_readme_and_docs_resolve():
    texts = documents()
    missing = []
    for doc, c in all_citations():
        for target in c.links:
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(doc), path)) if path else \
                os.path.join(REPO_ROOT, doc)
            if not os.path.exists(full):
                missing.append(f"{doc}: ({target}) no such file")
                continue
            if anchor:
                target_doc = os.path.relpath(full, REPO_ROOT)
                if target_doc in texts:
                    text = texts[target_doc]
                else:
                    with open(full, encoding="utf-8") as f:
                        text = f.read()
                if anchor not in heading_anchors(text):
                    missing.append(f"{doc}: ({target}) no heading with that anchor")
    assert not missing, report(missing, "link targets")


def test_readme_fits_on_a_screen():
    """A newcomer's path: what it is, install, data, one block per command; details are in docs/."""
    lines = documents()[README].count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/ (limit {README_MAX_LINES})"


def readme_section(title: str) -> str:
    return documents()[README].split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def bash_block_commands(section: str) -> list[str]:
    """The commands of a section's first bash block, without comments."""
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line and not line.startswith("#")]


def test_quick_start_gets_the_cpu_torch_of_the_pins_and_ci_runs_its_commands():
    commands = bash_block_commands(readme_section("Quick start"))
    cpu = [c for c in commands if "--index-url https://download.pytorch.org/whl/cpu" in c]
    assert len(cpu) == 1
    with open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8") as f:
        pins = [line.strip() for line in f if line.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2 and all(pin in cpu[0].split() for pin in pins)  # the versions requirements.txt pins
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read().splitlines()
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command.startswith("pip install -e . && ") and test_command in ci
    # The Tests section's full-suite command is that same test command.
    full_suite = bash_block_commands(readme_section("Tests"))[0]
    assert test_command == f"pip install -e . && {full_suite}"


def test_the_extractor_finds_each_kind_of_citation():
    """The checks above pass vacuously if extraction finds nothing: it must find every kind in a sample,
    and plenty in the real documents."""
    sample = "\n".join([
        "See `processor/step.py`, `tests/faults/` and `--overlay tiny.yml`; outputs go to `outputs/demo/x.pth`.",
        "Checked by `tests/test_training.py::test_a`, `::test_b`; `sas::gru` is an op, not a test.",
        "Run `python -m tools.export --model_path CKPT`; it uses `utils.metrics.ChunkedDistance` and `SOLVER.BASE_LR`.",
        "[training](docs/training.md#checkpoints), [site](https://example.org)",
        "```python", "from processor.inference import FeatureExtractor, load_clips", "```",
        "```", "DATA/train/<PID>/<tracklet>/*.jpg", "```",
    ])
    c = cited(sample)
    assert c.paths == ("processor/step.py", "tests/faults/")
    assert c.config_files == ("tiny.yml",)
    assert c.tests == (("tests/test_training.py", "test_a"), ("tests/test_training.py", "test_b"))
    assert c.modules == ("tools.export",)
    assert set(c.names) == {"tools.export", "utils.metrics.ChunkedDistance", "processor.inference",
                            "processor.inference.FeatureExtractor", "processor.inference.load_clips"}
    assert c.keys == ("SOLVER.BASE_LR",)
    assert c.links == ("docs/training.md#checkpoints",)
    layout = ("\n## Layout\n```\nprocessor/   step.py (TrainStep), encoding.py (the one\n"
              "             clip-encoding path; see x.py)\nloss/, solver/   a.py\ntests/   faults/ is\n```\n")
    assert layout_paths(layout) == ["processor/step.py", "processor/encoding.py", "tests/faults/"]
    assert heading_anchors("# A title\n## `torch.compile`\n## Several GPUs (DDP)\n## A title") == {
        "a-title", "torchcompile", "several-gpus-ddp", "a-title-1"}

    real = all_citations()
    counts = {kind: sum(len(getattr(c, kind)) for _, c in real) for kind in Citations.__dataclass_fields__}
    assert counts["paths"] >= 40 and counts["tests"] >= 40 and counts["names"] >= 10, counts
    assert counts["keys"] >= 40 and counts["links"] >= 15 and counts["modules"] >= 10, counts
    assert len(layout_paths(documents()[README])) >= 30
