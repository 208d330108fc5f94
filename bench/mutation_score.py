"""Mutation score: how many hand-made, realistic bugs the test suite catches (issue 20, point 6).

``python bench/mutation_score.py [--list] [--only ID,...] [--jobs 1] [--timeout 600] [--keep] [--tests T,...]``

Each catalog entry is one bug someone could plausibly write (an off-by-one, a dropped condition, a
field forgotten in a cache key, swapped arguments, a sort key of the wrong type, ...): a short id, the
behaviour it breaks in words, an exact code snippet and its replacement. The snippet is located by
searching every tracked ``.py`` file outside ``tests/`` (so entries survive files moving between
modules); it must occur exactly once, else the entry is reported as "not applicable" (a stale entry,
never a guess). For each mutant the tracked files are copied into a temporary folder, the snippet is
replaced there, and pytest runs (``-x -q -p no:cacheprovider``) on the test files that can see the
mutated module (rule printed at the start: see :func:`select_tests`). A failing run = caught; a
passing run = survived; a run past ``--timeout`` counts as caught but is flagged. The report is a table
per module (caught / total) and the survivors with the behaviour each one breaks.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.relpath(os.path.abspath(__file__), ROOT)   # holds the snippets: never searched
# Modules that run training or write files: their mutants also run the fault tests (tests/faults/).
RUN_IO_MODULES = ("utils.fileio", "utils.checkpoint", "utils.runlock", "utils.signals", "processor.trainer",
                  "processor.run_folder", "processor.training_run", "processor.step", "train")


@dataclass(frozen=True)
class Mutant:
    id: str
    behaviour: str      # what the bug breaks, in words
    snippet: str        # exact code that occurs once in the project's non-test .py files
    replacement: str


CATALOG = (
    # ------------------------------------------------------------------ utils/protocol.py
    Mutant("protocol-row-key-natural", "submission rows within a PID in natural order (0024_987 before 0024_5453) "
           "instead of plain string order", "return int(pid), str(tracklet_name)",
           "return int(pid), natural_sort_key(tracklet_name)"),
    Mutant("protocol-csv-only-space", "a tab or newline in a tracklet name is not refused for the CSV",
           r'''_CSV_UNSAFE_RE = re.compile(r"[\s,\"']")''', r'''_CSV_UNSAFE_RE = re.compile(r"[ ,\"']")'''),
    Mutant("protocol-isdigit", "non-ASCII digits ('²', '٣') read as integers in names",
           "return _ASCII_DIGITS_RE.fullmatch(token) is not None", "return token.isdigit()"),
    Mutant("protocol-junk-any-identity", "a gallery entry of another identity with the query's key counted as junk",
           "return same_pid & ~same_key, same_pid & same_key", "return same_pid & ~same_key, same_key"),
    # ------------------------------------------------------------------ utils/submission.py
    Mutant("submission-pid-as-string", "case folder queries ordered by PID as a string (10 before 9)",
           "entries.sort(key=lambda e: submission_row_key(*e))", "entries.sort(key=lambda e: (str(e[0]), e[1]))"),
    Mutant("submission-rank-le", "R@k counts a first hit at rank k+1", "float(np.mean(np.asarray(first_hits) < k))",
           "float(np.mean(np.asarray(first_hits) <= k))"),
    Mutant("submission-split-single-space", "the scorer splits ranked names on single spaces only (the released "
           "scorer's str.split() takes any whitespace)", 'row["ranked_gallery_tracklets"].split()), dtype=np.int64)',
           'row["ranked_gallery_tracklets"].split(" ")), dtype=np.int64)'),
    # ------------------------------------------------------------------ datasets/detreidx.py: names
    Mutant("names-height-wrong-limit", "a drone height checked against the distance limit (1000 m)",
           "if values[0] > MAX_HEIGHT_M:", "if values[0] > MAX_DISTANCE_M:"),
    Mutant("names-pitch-ge", "a pitch of exactly 90 degrees refused", "if values[2] > MAX_PITCH_DEG:",
           "if values[2] >= MAX_PITCH_DEG:"),
    Mutant("names-signed-decimal", "a negative or signed height/distance/angle accepted",
           '_DECIMAL_RE = re.compile(r"[0-9]+(?:\\.[0-9]+)?")', '_DECIMAL_RE = re.compile(r"[-+]?[0-9]+(?:\\.[0-9]+)?")'),
    Mutant("names-hour-24", "hour 24 accepted", "if hour > 23:", "if hour > 24:"),
    Mutant("names-day-31", "31 February accepted (month length ignored)",
           "if not 1 <= day <= calendar.monthrange(year, month)[1]:", "if not 1 <= day <= 31:"),
    Mutant("names-session-any-number", "a frame number read as the session", '_SESSION_RE = re.compile(r"[Ss]?([1-9])")',
           '_SESSION_RE = re.compile(r"[Ss]?([0-9]+)")'),
    Mutant("names-session-s-last", "a bare integer wins over an explicit S<n> session token",
           'candidates.sort(key=lambda token: token[:1] not in ("S", "s"))',
           'candidates.sort(key=lambda token: token[:1] in ("S", "s"))'),
    # ------------------------------------------------------------------ datasets/detreidx.py: scan + cache
    Mutant("scan-sort-natural", "scanned tracklets in natural name order, not the submission row order",
           "key=lambda t: submission_row_key(t.pid, t.name))", "key=lambda t: (t.pid, natural_sort_key(t.name)))"),
    Mutant("scan-hidden-frames", "hidden frame files (macOS ._frame.jpg) read as frames",
           "e.name.lower().endswith(FRAME_EXTENSIONS) and not _is_hidden(e.name) and e.is_file()",
           "e.name.lower().endswith(FRAME_EXTENSIONS) and e.is_file()"),
    Mutant("scan-hidden-folders", "hidden folders (.git, .Trash) read as PID or tracklet folders",
           "            if _is_hidden(entry.name):\n                continue\n            try:\n                if entry.is_dir():",
           "            if entry.name in ('.', '..'):\n                continue\n            try:\n                if entry.is_dir():"),
    Mutant("scan-dangling-link-skipped", "a symbolic link that loops or points nowhere is skipped without a word",
           "                os.stat(entry.path)\n", "                pass\n"),
    Mutant("scan-cache-key-no-option", "the scan cache key ignores the ground/aerial reading option",
           'f"{SCAN_CACHE_VERSION}\\0{root}\\0{bool(unknown_as_ground)}"', 'f"{SCAN_CACHE_VERSION}\\0{root}"'),
    Mutant("scan-cache-key-no-ctime", "the scan cache key ignores inode change times (an mtime restored by rsync -t "
           "hides a change)", "\\0{d.mtime_ns}\\0{d.ctime_ns}", "\\0{d.mtime_ns}"),
    Mutant("scan-cache-no-reread", "a hand-edited height/session in the scan cache is believed",
           "            if read != info:", "            if read.view != info.view:"),
    Mutant("scan-cache-no-settle", "the scan cache is written while folders may still change within the clock tick",
           "if cache_file is not None and time.time() - newest > SCAN_CACHE_SETTLE_S:", "if cache_file is not None:"),
    Mutant("scan-camera-session-zero", "a checkpoint's camera count adds an aerial session 0 (clashes with ground)",
           "sessions |= set(range(1, num_cameras))", "sessions |= set(range(num_cameras))"),
    Mutant("scan-camera-fallback-last", "an unknown aerial camera falls back to the last aerial camera, not the first",
           "aerial_ids[0] if aerial_ids and k != \"ground\" else 0", "aerial_ids[-1] if aerial_ids and k != \"ground\" else 0"),
    Mutant("scan-val-ids-gt", "VAL_IDS equal to the number of identities accepted (nothing left to train)",
           "val_ids >= len(train_pids)", "val_ids > len(train_pids)"),
    # ------------------------------------------------------------------ utils/checkpoint.py
    Mutant("checksum-chunk-floor", "the chunk size rounds down: a large file gets more than MAX_CHUNKS chunks",
           "return max(CHUNK_BYTES, -(-length // MAX_CHUNKS))", "return max(CHUNK_BYTES, length // MAX_CHUNKS)"),
    Mutant("checksum-last-byte-chunk", "a file one byte past a whole number of chunks loses its last chunk's CRC",
           "starts = range(0, length, chunk)", "starts = range(0, length - 1, chunk)"),
    Mutant("checksum-size-unchecked", "a checksum trailer that does not fit the file size is not reported as such",
           "if count > MAX_CHUNKS or length + table_bytes + _FOOTER.size != size:", "if count > MAX_CHUNKS:"),
    Mutant("resume-oldest-first", "resume falls back to the oldest epoch checkpoint instead of the newest",
           "return sorted(found, reverse=True)", "return sorted(found)"),
    # ------------------------------------------------------------------ utils/fileio.py
    Mutant("atomic-keyboardinterrupt-leaves-temp", "a KeyboardInterrupt inside a write leaves its temporary file",
           "    except BaseException as exc:\n        try:\n            os.remove(tmp)",
           "    except Exception as exc:\n        try:\n            os.remove(tmp)"),
    Mutant("atomic-no-fsync", "the data is not fsynced before the rename (a power cut can leave an empty file)",
           "            os.fsync(f.fileno())   # data on disk", "            pass   # data on disk"),
    Mutant("atomic-mode-0600", "files written atomically keep mkstemp's 0600 mode",
           "    os.fchmod(fd, 0o666 & ~_process_umask())\n", ""),
    Mutant("stale-temp-follows-links", "the stale temp cleanup follows symbolic links into other folders",
           "if entry.is_dir(follow_symlinks=False):", "if entry.is_dir():"),
    Mutant("stale-temp-depth", "the stale temp cleanup goes one level deeper than asked",
           "                if depth > 0:", "                if depth >= 0:"),
    # ------------------------------------------------------------------ utils/runlock.py
    Mutant("runlock-key-not-realpath", "a second lock on the same folder via another spelling of its path is not "
           "refused in-process", "key = os.path.realpath(self.path)", "key = self.path"),
    Mutant("runlock-pid-reuse", "a stale lock whose pid now belongs to another process is taken as running",
           "return ticks is None or _process_start_ticks(pid) == ticks", "return True"),
    Mutant("runlock-other-host", "a lock of a pid on another host is taken as running here",
           'if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):',
           'if not isinstance(info.get("pid"), int):'),
    Mutant("runlock-removes-foreign-file", "release removes a lock file that is no longer its own",
           "            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:\n                os.remove(self.path)",
           "            if True:\n                os.remove(self.path)"),
    Mutant("runlock-keeps-created-folders", "the folders a refused or empty run created are left behind",
           "self.created_folders = _missing_folders(self.folder)", "self.created_folders = []"),
    # ------------------------------------------------------------------ utils/signals.py
    Mutant("signals-second-ignored", "a second stop signal does not stop at once",
           'raise StoppedAtOnce(f"a second stop signal, {signal_name(signum)}")', "return"),
    Mutant("signals-no-usr1", "SLURM's warning signal SIGUSR1 does not stop at a step boundary",
           "STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)", "STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)"),
    Mutant("signals-flag-kept", "the stop flag outlives the run (a later loop in the process stops at once)",
           '        _state["installed"] = False\n        reset()', '        _state["installed"] = False'),
    # ------------------------------------------------------------------ run folders (processor/trainer.py)
    Mutant("runfolder-empty-metrics-is-run", "config.yaml, log.txt and an empty metrics.jsonl count as a run",
           " if os.path.basename(p) != METRICS_FILE or metrics_written(output_dir)]", "]"),
    Mutant("runfolder-metrics-not-marker", "a run that wrote metrics but no checkpoint yet is not a run",
           'RUN_MARKERS = ("checkpoint_*.pth", METRICS_FILE)', 'RUN_MARKERS = ("checkpoint_*.pth",)'),
    Mutant("runfolder-failed-start-kept", "a failed start's log is kept, so two attempts share one log",
           "return run_files(output_dir, FAILED_START_FILES)", "return []"),
    Mutant("runfolder-no-glob-escape", "an OUTPUT_DIR with [ ] in its name hides its run files",
           "glob.glob(os.path.join(glob.escape(output_dir), pattern))", "glob.glob(os.path.join(output_dir, pattern))"),
    Mutant("trainer-epoch-seed-no-rank", "every DDP rank draws the same random numbers",
           "return base_seed + 1_000_003 * epoch + 7919 * rank", "return base_seed + 1_000_003 * epoch"),
    # ------------------------------------------------------------------ processor/search.py
    Mutant("search-key-no-camera", "the search cache ignores the camera id", "parts = [os.path.abspath(tracklet.folder), int(camid)]",
           "parts = [os.path.abspath(tracklet.folder)]"),
    Mutant("search-identity-no-ctime", "a file rewritten in place with its mtime restored looks unchanged",
           "return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]",
           "return [stat.st_ino, stat.st_size, stat.st_mtime_ns]"),
    Mutant("search-model-key-no-file", "the search cache ignores the checkpoint file's identity (path only)",
           "parts = [os.path.abspath(model_path), *_file_identity(model_path), cfg.TEST.SEQ_LEN",
           "parts = [os.path.abspath(model_path), cfg.TEST.SEQ_LEN"),
    Mutant("search-width-unchecked", "a cached row of another width is reused", "if row.shape != (dim,):",
           "if row.ndim != 1:"),
    Mutant("search-unit-unchecked", "a cached row that is not unit length is reused",
           "if abs(float(np.linalg.norm(row.astype(np.float64))) - 1.0) > UNIT_NORM_TOLERANCE:", "if False:"),
    Mutant("search-digest-no-key", "a cached row moved to another tracklet's key passes its checksum",
           'f"{model_key}\\0{key}\\0{row.dtype.str}\\0{row.shape}\\0"', 'f"{model_key}\\0{row.dtype.str}\\0{row.shape}\\0"'),
    Mutant("search-gallery-query-camera", "the gallery is embedded with the query camera",
           'gf = embed_cached(extractor, gallery, gallery_camera, cache, "gallery")',
           'gf = embed_cached(extractor, gallery, query_camera, cache, "gallery")'),
    Mutant("search-hidden-frames", "a folder holding only hidden frame files counts as a tracklet",
           'return name.lower().endswith(FRAME_EXTENSIONS) and not name.startswith(".")',
           "return name.lower().endswith(FRAME_EXTENSIONS)"),
    # ------------------------------------------------------------------ processor/inference.py
    Mutant("inference-view-all-aerial", "camera 0 (ground) gets the aerial SIE view", "return (camids > 0).long()",
           "return (camids >= 0).long()"),
    Mutant("inference-frames-plain-sort", "frames of a folder in plain order (frame_10 before frame_2)",
           "    names.sort(key=natural_sort_key)\n    return tuple(os.path.join(folder, name) for name in names)",
           "    names.sort()\n    return tuple(os.path.join(folder, name) for name in names)"),
    Mutant("inference-camid-le", "camera id == the model's camera count accepted",
           "if not 0 <= c < max(self.num_cameras, 1)", "if not 0 <= c <= max(self.num_cameras, 1)"),
    Mutant("inference-map3-by-queries", "mAP-3 pooled over every query (one without a true match as AP 0) "
           "instead of the scored (valid) queries",
           "aps.append(ap[valid])", "aps.append(np.where(valid, ap, 0.0))"),
    # ------------------------------------------------------------------ tools/export.py
    Mutant("export-nan-passes", "a NaN parity difference passes the check", "if not diff <= tolerance:",
           "if diff > tolerance:"),
    Mutant("export-parity-last-batch", "parity keeps only the last batch size's difference",
           "worst = max(worst, float(np.abs(got - expected).max()))", "worst = float(np.abs(got - expected).max())"),
    # ------------------------------------------------------------------ tools/ablate.py
    Mutant("ablate-r1-is-map", "the ablation table's R1 column holds the mean mAP", '("val R1", "val", "mean_R1"),',
           '("val R1", "val", "mean_mAP"),'),
    Mutant("ablate-weights-unnamed", "the weights column does not name the checkpoint used",
           'chosen = report.get("final_weights", {})', "chosen = {}"),
    Mutant("ablate-population-std", "std over seeds divides by n (population) instead of n-1",
           "/ (len(values) - 1))", "/ len(values))"),
    Mutant("ablate-seeds-from-one", "--seeds 3 trains seeds 1, 2, 3 instead of 0, 1, 2",
           "seeds = list(range(int(text)))", "seeds = list(range(1, int(text) + 1))"),
    Mutant("ablate-one-seed-subfolder", "a single listed seed trains into a seed<S> subfolder",
           "several = args.seed_list is not None and len(args.seed_list) > 1", "several = args.seed_list is not None"),
    # ------------------------------------------------------------------ solver/optimizer.py
    Mutant("lr-head-prefix-no-dot", "HEAD_LR_CLASSIFIERS 'frame' also gives the framewise_shape classifiers its rate",
           'return tuple(f"classifier_{n}." for n in names)', 'return tuple(f"classifier_{n}" for n in names)'),
    Mutant("lr-bias-match-ignored", "SOLVER.BIAS_NAME_MATCH substring ignored (GRU bias_ih_l0 not a bias)",
           'if ("bias" in name) if bias_name_match == "substring" else name.endswith("bias"):',
           'if name.endswith("bias"):'),
    Mutant("lr-backbone-bias-factor", "the pretrained encoder's biases get the heads' bias factor",
           "lr *= backbone_bias_lr_factor if pretrained else bias_lr_factor", "lr *= bias_lr_factor"),
    # ------------------------------------------------------------------ model/memory.py
    Mutant("memory-occurrence-self", "a sample counts itself among the earlier samples of its identity",
           "dtype=torch.bool, device=labels.device).tril(-1)", "dtype=torch.bool, device=labels.device).tril()"),
    Mutant("memory-hard-before-moves", "the sequential rule picks the hard sample against the proxy before the moves",
           "        reference = mean\n", "        reference = old[:, MEAN_PROXY]\n"),
    Mutant("memory-hard-is-easiest", "the hard proxy moves towards the most similar sample", 'reduce="amin", include_self=True)\n            is_lowest',
           'reduce="amax", include_self=True)\n            is_lowest'),
    Mutant("memory-rebuild-zeroes-missing", "a rebuild zeroes the proxies of identities without features",
           "self.proxies.copy_(torch.where(present[:, None, None], rebuilt, self.proxies))", "self.proxies.copy_(rebuilt)"),
    Mutant("memory-momentum-swapped", "the momentum weights the new sample instead of the old proxy",
           "moved = F.normalize(m * proxies + (1 - m) * targets, dim=1)",
           "moved = F.normalize((1 - m) * proxies + m * targets, dim=1)"),
    # ------------------------------------------------------------------ model/mgtm.py
    Mutant("mgtm-relative-no-half", "relative positions without the half-frame offset",
           "rows.append((position.float() + 0.5) / length.float() * train_length)",
           "rows.append(position.float() / length.float() * train_length)"),
    Mutant("mgtm-whole-level-raw", "FRAME_SOURCE whole: the whole-clip level enters f_tp un-normalised",
           "f_frame.mean(dim=1)[None],", "clip_vectors[self.whole_level:self.whole_level + 1],"),
    Mutant("mgtm-whole-level-first", "FRAME_SOURCE whole takes the first level, not the granularity-1 level",
           'self.whole_level = granularities.index(1) if frame_source == "whole" else None',
           'self.whole_level = 0 if frame_source == "whole" else None'),
    Mutant("mgtm-window-floor", "frames assigned to windows by floor(t·n/T), not the layout's boundaries",
           "window = ((frame + 1) * count - 1) // num_frames", "window = (frame * count) // num_frames"),
    # ------------------------------------------------------------------ utils/report.py
    Mutant("report-clothes-all-changed", "a query counts as clothes-changed only when every true match changed outfit",
           "elif any(m != own for m in matches):", "elif all(m != own for m in matches):"),
    Mutant("report-clothes-unlabelled-counted", "unlabelled queries counted in the clothes-changed mAP",
           '"AP": np.where(labelled, metrics["AP"], np.nan)', '"AP": metrics["AP"]'),
    Mutant("report-clothes-shared-unknown-id", "every unlabelled tracklet shares one outfit id (same-pid ones become junk)",
           "if n in outfits else -(start + i + 1)", "if n in outfits else -1"),
    Mutant("report-bin-closed", "a value on a bin's upper edge counted in two bins", "(values >= low) & (values < high)",
           "(values >= low) & (values <= high)"),
    # ------------------------------------------------------------------ configs
    Mutant("config-legacy-overwrites", "legacy values overwrite what a stored config says",
           "for key, value in LEGACY_VALUES.items():\n            if not lookup(key)[1]:",
           "for key, value in LEGACY_VALUES.items():\n            if True:"),
    Mutant("config-renamed-kept", "a renamed key stays in the upgraded config (the old checkpoint no longer loads)",
           'value = node.pop(old.split(".")[-1])', 'value = node.get(old.split(".")[-1])'),
    Mutant("config-root-override-keeps-synthetic", "a command-line ROOT_DIR keeps SYNTHETIC_IF_MISSING even when "
           "the command line sets it", 'if cfg.DATASETS.ROOT_DIR != file_root and "DATASETS.SYNTHETIC_IF_MISSING" not in keys:',
           "if cfg.DATASETS.ROOT_DIR != file_root:"),
)


# ----------------------------------------------------------------------------- locating
UNTRACKED_FOLDERS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".venv", ".venv-ci"}


def tracked_files(root: str = ROOT) -> list[str]:
    """Tracked files (``git ls-files``) that exist in the working tree, relative to ``root``; outside a git
    checkout (an unpacked ``git archive``) every file below ``root`` except version-control folders and caches
    (``.ci/run`` and ``.gitignore`` are read by tests)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        found = []
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if d not in UNTRACKED_FOLDERS)
            found += [os.path.relpath(os.path.join(folder, n), root) for n in sorted(names)]
        return found
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p and os.path.isfile(os.path.join(root, p))]


def project_sources(root: str = ROOT, files: list[str] | None = None) -> dict[str, str]:
    """{path: text} of the project's .py files outside tests/ (this file, which holds the snippets, left out)."""
    files = tracked_files(root) if files is None else files
    sources = {}
    for path in files:
        if path.endswith(".py") and not path.startswith("tests/") and path != THIS_FILE:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                sources[path] = f.read()
    return sources


def locate(mutant: Mutant, sources: dict[str, str]) -> tuple[str | None, int]:
    """(the file holding the snippet, total occurrences); the file is None unless it occurs exactly once."""
    counts = {path: text.count(mutant.snippet) for path, text in sources.items()}
    total = sum(counts.values())
    found = [path for path, n in counts.items() if n]
    return (found[0] if total == 1 else None), total


def module_name(path: str) -> str:
    """``datasets/detreidx/scan.py`` -> ``datasets.detreidx.scan``; ``configs/__init__.py`` -> ``configs``."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


SELECTION_RULE = ("tests/**/test_*.py whose text names the mutated module: its dotted name (word-bounded, e.g. "
                  "'utils.fileio', also '-m utils.fileio'), 'from <package> import ... <module>' or a name the package "
                  "re-exports from the module ('from solver import build_optimizer'), the sub-package "
                  "for a module inside one (datasets.detreidx for datasets.detreidx.scan); a top-level module "
                  "(train, configs) by 'import X' / 'from X import' / 'X.py'; then the test files that import one "
                  "of those or a shared helper module that names it (from tests.helpers.models import make_tiny_sas); "
                  "plus tests/faults/test_*.py for the "
                  f"run/IO modules {', '.join(RUN_IO_MODULES)}")


def reexported_names(module: str, sources: dict[str, str]) -> set[str]:
    """Names the package ``__init__.py`` above ``module`` re-exports from it (``from pkg.mod import a, b``,
    ``from .mod import a``, or a lazy table ``"a": "pkg.mod"``): ``from solver import build_optimizer``
    sees solver.optimizer."""
    parent, _, leaf = module.rpartition(".")
    text = sources.get(parent.replace(".", "/") + "/__init__.py", "") if parent else ""
    names = set()
    for match in re.finditer(rf"from\s+(?:{re.escape(parent)})?\.{re.escape(leaf)}\s+import\s+(\([^)]*\)|[^\n]*)", text):
        names |= set(re.findall(r"\b(\w+)\b(?!\s+as\b)", match.group(1).split("#")[0])) - {"as"}
    names |= set(re.findall(rf"[\"'](\w+)[\"']\s*:\s*[\"']{re.escape(module)}[\"']", text))
    return names


def _name_patterns(module: str, reexported: set[str] = frozenset()) -> list[re.Pattern]:
    parts = module.split(".")
    if len(parts) == 1:
        name = re.escape(module)
        return [re.compile(rf"(?m)^\s*(?:import\s+{name}\b|from\s+{name}(?:\.\w+)*\s+import\b)"),
                re.compile(rf"\b{name}\.py\b")]
    patterns = [re.compile(rf"(?<![\w.]){re.escape(module)}\b")]
    parent, leaf = ".".join(parts[:-1]), parts[-1]
    imported = "|".join(re.escape(n) for n in sorted({leaf} | set(reexported)))
    patterns.append(re.compile(rf"from\s+{re.escape(parent)}\s+import\s+(?:\([^)]*|[^\n]*)\b(?:{imported})\b"))
    if len(parts) > 2:   # a module inside a sub-package: tests import the sub-package
        patterns.append(re.compile(rf"(?<![\w.]){re.escape(parent)}\b"))
    return patterns


def select_tests(module: str, test_texts: dict[str, str], reexported: set[str] = frozenset()) -> list[str]:
    """The test files that can see ``module`` (see SELECTION_RULE; ``reexported``: the names its package
    re-exports from it, :func:`reexported_names`), sorted."""
    patterns = _name_patterns(module, reexported)
    chosen = {path for path, text in test_texts.items() if any(p.search(text) for p in patterns)}
    # One step further: test files that import a chosen one (``from tests.test_mgtm import make_mgtm``) or a
    # chosen shared helper module (``from tests.helpers.models import make_tiny_sas``).
    helpers = [re.compile(rf"(?<![\w.]){re.escape(module_name(path))}\b") for path in sorted(chosen)]
    chosen |= {path for path, text in test_texts.items() if any(p.search(text) for p in helpers)}
    if any(module == m or module.startswith(m + ".") for m in RUN_IO_MODULES):
        chosen |= {path for path in test_texts if path.startswith("tests/faults/")}
    return sorted(path for path in chosen if os.path.basename(path).startswith("test_"))   # helpers are not run


# Checks the catalog itself (each snippet occurs once): it fails on any mutated copy, so it is never selected.
CATALOG_TEST = "tests/test_mutation_catalog.py"


def test_sources(files: list[str], root: str = ROOT) -> dict[str, str]:
    """{path: text} of the test files (tests/**/test_*.py) a mutant may select, CATALOG_TEST left out, and of the
    shared helper modules (tests/helpers/*.py: never run, their importers are selected through them)."""
    texts = {}
    for path in files:
        shared = path.startswith("tests/helpers/") and path.endswith(".py")
        if path.startswith("tests/") and (os.path.basename(path).startswith("test_") or shared) \
                and path.endswith(".py") and path != CATALOG_TEST:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                texts[path] = f.read()
    return texts


# ----------------------------------------------------------------------------- running
@dataclass
class Outcome:
    mutant: Mutant
    path: str | None
    occurrences: int
    tests: tuple[str, ...] = ()
    status: str = "not applicable"   # caught | survived | not applicable | not run (interrupted)
    flag: str = ""                   # timeout | collection error | no tests
    first_failure: str = ""

    @property
    def module(self) -> str:
        return module_name(self.path) if self.path else "-"


_stopping = threading.Event()          # set by SIGINT/SIGTERM: no further mutant starts
_running: set[int] = set()             # process groups of the pytest runs in flight


def _stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """End the pytest runs in flight (each has its own process group) and start no other."""
    _stopping.set()
    for group in list(_running):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return ""


def copy_files(files: list[str], source: str, target: str) -> None:
    for path in files:
        destination = os.path.join(target, path)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(os.path.join(source, path), destination)


def _pytest(folder: str, args: list[str], timeout: float) -> tuple[int, str] | None:
    """Run ``pytest -x -q -p no:cacheprovider ARGS`` in ``folder`` (its own process group, PYTHONPATH=folder
    so subprocesses import the copy too) -> (exit code, output), or None past ``timeout``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)   # its own group: a timeout ends its children too
    _running.add(process.pid)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None
    finally:
        _running.discard(process.pid)
    return process.returncode, output


_baseline: dict[str, bool] = {}      # test node id -> passes on the unmutated snapshot
_baseline_lock = threading.Lock()


def passes_unmutated(node: str, files: list[str], source: str, timeout: float) -> bool:
    """Whether the test ``node`` passes on an unmutated copy of the snapshot (cached). A catch counts only
    when it does: a test that fails without any mutant (a network or packaging test) catches nothing."""
    with _baseline_lock:
        if node in _baseline:
            return _baseline[node]
    folder = tempfile.mkdtemp(prefix="mutant-baseline-")
    try:
        copy_files(files, source, folder)
        result = _pytest(folder, ["--collect-only", node] if "::" not in node else [node], timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ok = result is not None and result[0] == 0
    with _baseline_lock:
        _baseline[node] = ok
    return ok


def run_mutant(outcome: Outcome, files: list[str], source: str, timeout: float, keep: bool) -> Outcome:
    """Copy ``files`` from ``source`` (the snapshot taken at the start), apply the mutant, run pytest on its
    tests; fills in status/flag/first_failure. A test that also fails unmutated is deselected and the run
    repeated (see :func:`passes_unmutated`)."""
    mutant = outcome.mutant
    folder = tempfile.mkdtemp(prefix=f"mutant-{mutant.id}-")
    try:
        copy_files(files, source, folder)
        target = os.path.join(folder, outcome.path)
        with open(target, encoding="utf-8") as f:
            text = f.read()
        with open(target, "w", encoding="utf-8") as f:
            f.write(text.replace(mutant.snippet, mutant.replacement, 1))
        deselected: list[str] = []
        while True:
            result = _pytest(folder, [*outcome.tests, *(f"--deselect={node}" for node in deselected)], timeout)
            if _stopping.is_set():
                outcome.status = "not run"
                return outcome
            if result is None:
                outcome.status, outcome.flag = "caught", "timeout"
                return outcome
            code, output = result
            outcome.first_failure = _first_failure(output)
            if code == 0:
                outcome.status = "survived"
            elif code == 5:
                outcome.status, outcome.flag = "survived", "no tests"
            else:
                outcome.status = "caught"
                if code != 1:
                    outcome.flag = f"pytest exit {code} (collection or internal error)"
                node = outcome.first_failure.split(" ", 1)[1] if outcome.first_failure else ""
                if node and node not in deselected and not passes_unmutated(node, files, source, timeout):
                    deselected.append(node)
                    continue
            if deselected:
                outcome.flag = (outcome.flag + "; " if outcome.flag else "") + \
                    f"deselected, failing unmutated too: {', '.join(deselected)}"
            return outcome
    finally:
        if keep:
            print(f"  kept {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def plan(mutants, files: list[str]) -> list[Outcome]:
    sources, tests = project_sources(files=files), test_sources(files)
    outcomes = []
    for mutant in mutants:
        path, count = locate(mutant, sources)
        outcome = Outcome(mutant, path, count)
        if path is not None:
            module = module_name(path)
            outcome.tests = tuple(select_tests(module, tests, reexported_names(module, sources)))
        outcomes.append(outcome)
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    lines = ["", "Per module (caught / total of the applicable mutants):"]
    modules: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.status in ("caught", "survived"):
            modules.setdefault(outcome.module, []).append(outcome)
    width = max([len(m) for m in modules] + [6])
    for module, group in sorted(modules.items()):
        caught = sum(o.status == "caught" for o in group)
        lines.append(f"  {module:<{width}}  {caught:>3} / {len(group):<3} {100 * caught / len(group):5.1f} %")
    applicable = [o for o in outcomes if o.status in ("caught", "survived")]
    caught = sum(o.status == "caught" for o in applicable)
    if applicable:
        lines.append(f"  {'total':<{width}}  {caught:>3} / {len(applicable):<3} {100 * caught / len(applicable):5.1f} %")
    survivors = [o for o in applicable if o.status == "survived"]
    lines.append("")
    lines.append(f"Survivors ({len(survivors)}):" if survivors else "Survivors: none")
    lines += [f"  {o.mutant.id} [{o.module}]: {o.mutant.behaviour}" + (f" ({o.flag})" if o.flag else "")
              for o in survivors]
    flagged = [o for o in applicable if o.status == "caught" and o.flag]
    if flagged:
        lines.append("Caught with a flag (check by hand):")
        lines += [f"  {o.mutant.id} [{o.module}]: {o.flag}" for o in flagged]
    broken = sorted(node for node, ok in _baseline.items() if not ok)
    if broken:
        lines.append("Tests that fail without any mutant (deselected where they stopped a run; they catch nothing):")
        lines += [f"  {node}" for node in broken]
    stale = [o for o in outcomes if o.status == "not applicable"]
    if stale:
        lines.append("Not applicable (the snippet does not occur exactly once; update the catalog):")
        lines += [f"  {o.mutant.id}: found {o.occurrences} times" for o in stale]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the catalog (where each snippet is, its tests) and exit")
    parser.add_argument("--only", default="", help="comma-separated mutant ids to run")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (a timeout counts as caught)")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies (their paths are printed)")
    parser.add_argument("--tests", default="", help="comma-separated test files or node ids to run instead of the "
                                                    "selection (to check that a new test kills a mutant)")
    args = parser.parse_args(argv)
    mutants = list(CATALOG)
    if args.only:
        wanted = [i.strip() for i in args.only.split(",") if i.strip()]
        unknown = sorted(set(wanted) - {m.id for m in mutants})
        if unknown:
            parser.error(f"unknown mutant id(s) {unknown}; --list shows the catalog")
        mutants = [m for m in mutants if m.id in wanted]
    files = tracked_files()
    outcomes = plan(mutants, files)
    if args.tests:
        for outcome in outcomes:
            outcome.tests = tuple(t.strip() for t in args.tests.split(",") if t.strip())
    print(f"Test selection: {SELECTION_RULE}", flush=True)
    if args.list:
        for o in outcomes:
            where = o.path if o.path else f"NOT APPLICABLE (found {o.occurrences} times)"
            print(f"{o.mutant.id}: {o.mutant.behaviour}\n    in {where}; tests: {' '.join(o.tests) or '-'}")
        return 0
    runnable = [o for o in outcomes if o.path is not None]
    print(f"{len(runnable)} mutants to run ({len(outcomes) - len(runnable)} not applicable), {args.jobs} at a time",
          flush=True)

    # One snapshot of the tracked files at the start: edits made while the mutants run do not leak into them.
    snapshot = tempfile.mkdtemp(prefix="mutation-snapshot-")
    copy_files(files, ROOT, snapshot)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)

    def one(outcome: Outcome) -> Outcome:
        if _stopping.is_set():
            outcome.status = "not run"
            return outcome
        run_mutant(outcome, files, snapshot, args.timeout, args.keep)
        detail = outcome.flag or outcome.first_failure
        print(f"{outcome.status:>8}  {outcome.mutant.id} [{outcome.module}]" + (f"  {detail}" if detail else "")
              + f"  ({len(outcome.tests)} test files)", flush=True)
        return outcome

    try:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(one, runnable))
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    if _stopping.is_set():
        print("Interrupted: the mutants still to run were not run", flush=True)
    print(report(outcomes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
