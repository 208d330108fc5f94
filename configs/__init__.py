"""Config loading: defaults <- YAML (with ``_BASE_`` inheritance) <- command-line ``KEY VALUE`` pairs."""
from __future__ import annotations

import difflib
import os
from typing import Any, Iterable, Sequence

import yaml
from yacs.config import CfgNode as CN

from configs.defaults import get_defaults

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the file and key."""


def _read_yaml_with_bases(path: str, chain: tuple[str, ...] = ()) -> dict:
    """Read ``path`` and merge the files named by its ``_BASE_`` (one path or a list) beneath it."""
    path = os.path.abspath(path)
    if path in chain:
        cycle = " -> ".join(chain + (path,))
        raise ConfigError(f"_BASE_ cycle in config files: {cycle}. Remove one of the _BASE_ links.")
    if not os.path.isfile(path):
        where = f" (named by _BASE_ in {chain[-1]})" if chain else ""
        raise ConfigError(f"Config file not found: {path}{where}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"Invalid YAML in {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        _deep_update(merged, _read_yaml_with_bases(base_path, chain + (path,)))
    _deep_update(merged, data)
    return merged


def _deep_update(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _check_keys(node: CN, data: dict, source: str, prefix: str = "") -> None:
    """Raise a ConfigError naming the first key of ``data`` that the defaults do not have, or whose
    value has the wrong type; values are coerced in place where the intent is clear (1 -> 1.0)."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in node:
            raise ConfigError(f"Unknown config key {full} in {source}.{_suggest(node, key, prefix)} "
                              "See configs/defaults.py for the keys.")
        if isinstance(node[key], CN):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key {full} in {source} must be a mapping of sub-keys, got {value!r}")
            _check_keys(node[key], value, source, full + ".")
        else:
            data[key] = _coerce_value(full, node[key], value, source)


def _suggest(node: CN, key, prefix: str) -> str:
    """' Did you mean X?' for a misspelt key (case or a few letters off), else ''."""
    close = difflib.get_close_matches(str(key).upper(), [k.upper() for k in node.keys()], n=1, cutoff=0.75)
    if not close:
        return ""
    name = next(k for k in node.keys() if k.upper() == close[0])
    return f" Did you mean {prefix}{name}?"


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _coerce_number(default: Any, value: Any) -> Any:
    """1 -> 1.0 and "3e-3" -> 0.003 for a float default (YAML reads an exponent without a dot as a string)."""
    if isinstance(default, float) and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _coerce_value(full: str, default: Any, value: Any, source: str) -> Any:
    """``value`` as the type of ``default``, or a ConfigError naming the key and where it came from.

    yacs itself checks scalar types but lets null through for any key and never looks inside lists,
    so ``DEVICE: null`` or ``STEPS: [ten]`` would only fail deep inside a run.
    """
    if value is None:
        raise ConfigError(f"Config key {full} in {source} is null; it needs a {type(default).__name__} "
                          f"value such as {default!r}")
    value = _coerce_number(default, value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)) and default:
        items = [_coerce_number(default[0], item) for item in value]
        wrong = [item for item in items if not _same_kind(default[0], item)]
        if wrong:
            raise ConfigError(f"Config key {full} in {source} needs a list of {type(default[0]).__name__} values "
                              f"such as {list(default)!r}, got {list(value)!r} ({wrong[0]!r} is not one)")
        return type(value)(items)
    return value


def _merge(cfg: CN, data: dict, source: str) -> None:
    _check_keys(cfg, data, source)
    try:
        cfg.merge_from_other_cfg(CN(data))
    except (ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"Cannot apply {source}: {exc}") from exc


def _parse_override(value: str) -> Any:
    """Command-line values are YAML scalars/lists: '0.1' -> 0.1, '[1,2]' -> [1, 2], 'abc' -> 'abc'."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _apply_overrides(cfg: CN, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"Command-line overrides must be KEY VALUE pairs; got an odd count: {list(opts)}")
    for key, raw in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, CN) or part not in node:
                known = ".".join(parts[:depth]) + "." if depth else ""
                hint = _suggest(node, part, known) if isinstance(node, CN) else ""
                raise ConfigError(f"Unknown config key {key} on the command line.{hint} "
                                  "See configs/defaults.py for the keys.")
            if depth < len(parts) - 1:
                node = node[part]
        value = _parse_override(raw)
        old = node[parts[-1]]
        if isinstance(old, CN):
            raise ConfigError(f"Config key {key} on the command line is a group; override one of its sub-keys")
        if isinstance(old, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:  # YAML reads "3e-3" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(old, str) and not isinstance(value, str):
            value = raw
        if isinstance(old, (list, tuple)) and not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key {key} on the command line needs a list like [a, b], got {raw!r}")
        if isinstance(old, (list, tuple)):
            value = _coerce_value(key, old, value, "the command line")
        if type(value) is not type(old) and not (isinstance(old, (list, tuple)) and isinstance(value, (list, tuple))):
            raise ConfigError(
                f"Config key {key} on the command line needs a {type(old).__name__} value, got {raw!r}"
            )
        node[parts[-1]] = value


CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def resolve_config_path(path: str) -> str:
    """``path`` as given when it exists, else the same relative path under ``configs/``
    (``ablations/01_baseline.yml``, ``tiny.yml``); a path found in neither place is returned unchanged
    so the error names what the user typed."""
    if not path or os.path.isfile(path) or os.path.isabs(path):
        return path
    candidate = os.path.join(CONFIG_DIR, path)
    return candidate if os.path.isfile(candidate) else path


def load_config(config_file: str | None = None, opts: Iterable[str] = (), freeze: bool = True,
                overlays: Sequence[str] = ()) -> CN:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then each of ``overlays`` (YAML
    files merged in order, like a trailing ``_BASE_`` entry), then ``opts`` (``[KEY, VALUE, ...]``).

    ``DATASETS.SYNTHETIC_IF_MISSING`` from a file holds for the root its files name: a command-line
    ``DATASETS.ROOT_DIR`` turns it off unless the command line sets it too, so a mistyped root is an
    error instead of a freshly generated fake dataset.
    """
    cfg = get_defaults()
    for path in ([config_file] if config_file else []) + list(overlays):
        path = resolve_config_path(path)
        _merge(cfg, _read_yaml_with_bases(path), path)
    opts = list(opts)
    file_root = cfg.DATASETS.ROOT_DIR
    _apply_overrides(cfg, opts)
    keys = opts[0::2]
    if cfg.DATASETS.ROOT_DIR != file_root and "DATASETS.SYNTHETIC_IF_MISSING" not in keys:
        cfg.DATASETS.SYNTHETIC_IF_MISSING = False
    if freeze:
        cfg.freeze()
    return cfg


def file_keys(config_file: str) -> list[str]:
    """The dotted keys ``config_file`` sets itself or through its ``_BASE_`` chain (not the defaults
    beneath them), sorted: what a file changes when it is laid over another config."""
    def walk(data: dict, prefix: str) -> list[str]:
        keys = []
        for key, value in data.items():
            if isinstance(value, dict):
                keys += walk(value, f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")
        return keys

    return sorted(walk(_read_yaml_with_bases(resolve_config_path(config_file)), ""))


def get_key(cfg: CN, key: str) -> Any:
    """The value of a dotted ``key`` of ``cfg``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def set_key(cfg: CN, key: str, value: Any) -> None:
    """Set a dotted ``key`` of an unfrozen ``cfg``."""
    section, _, name = key.rpartition(".")
    node = cfg
    for part in filter(None, section.split(".")):
        node = node[part]
    node[name] = value


# The initial pretrained weight files: a train.py checkpoint holds every weight, so a config rebuilt
# from one never reads them again.
PRETRAINED_KEYS = ("MODEL.PRETRAIN_PATH", "MODEL.PRETRAIN_TAG", "MODEL.PRSD.PRETRAINED", "MODEL.PRSD.SMPL_MEAN_PARAMS")


def clear_keys(cfg: CN, keys: Iterable[str]) -> None:
    """Set each dotted key of an unfrozen ``cfg`` to its empty value ("" for text, False for a flag)."""
    for key in keys:
        section, _, name = key.rpartition(".")
        node = cfg
        for part in section.split("."):
            node = node[part]
        node[name] = False if isinstance(node[name], bool) else ""


def changed_keys(before: CN, after: CN, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(KEY, old, new)`` for every leaf key whose value differs between two configs, in key order."""
    changes = []
    for key in after.keys():
        old, new = before.get(key), after[key]
        if isinstance(new, CN) and isinstance(old, CN):
            changes += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append((f"{prefix}{key}", old, new))
    return changes


def config_from_yaml_text(text: str, opts: Iterable[str] = ()) -> CN:
    """Rebuild a config from the YAML text stored in a checkpoint (no ``_BASE_`` there)."""
    from configs.defaults import upgrade_stored_config

    cfg = get_defaults()
    # A checkpoint of an earlier version keeps its behaviour: keys it predates get their old values.
    data = upgrade_stored_config(yaml.safe_load(text) or {})
    _merge(cfg, data, "the checkpoint's stored config")
    _apply_overrides(cfg, list(opts))
    cfg.freeze()
    return cfg
