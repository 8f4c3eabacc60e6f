"""Typed, nested run configuration loaded from YAML with ``key=value`` overrides.

Each stage declares its configuration as nested dataclasses whose defaults are
the small demo; a YAML file replaces any part of it, and ``a.b.c=value`` on the
command line replaces single entries (values parsed as YAML, so ``1e-4``,
``true``, ``[1, 2]`` and ``null`` work). Unknown keys are refused by name, so a
typo never silently trains the wrong model. The fully resolved configuration is
saved next to every checkpoint, so a run folder alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "name=x"]`` into a nested dict."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        if not key:
            raise UserError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return tree


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}): not a YAML config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys")
    return data


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is typing.Union or (origin is not None and str(origin) == "types.UnionType"):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"config key '{key}' has a bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are a UserError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def read_config_file(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML config; ``inherit: other.yaml`` (relative to the file) starts from another file's entries."""
    path = Path(path)
    if path.resolve() in _seen:
        raise UserError(f"{path}: 'inherit' forms a loop")
    data = read_yaml(path)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    return deep_merge(read_config_file(path.parent / str(parent), _seen + (path.resolve(),)), data)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls`` <- YAML file (and the files it inherits) <- ``key=value`` overrides."""
    data = to_dict(cls())
    if path is not None:
        data = deep_merge(data, read_config_file(path))
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def check_ranges(section: str, cfg: Any, at_least: dict[str, int], fractions: tuple[str, ...] = ()) -> None:
    """Refuse a key of ``cfg`` (config section ``section``) out of its range, naming key, value and range:
    ``at_least`` maps keys to their lowest value (None allowed where the key's default is None); ``fractions``
    must lie in [0, 1)."""
    for key, low in at_least.items():
        value = getattr(cfg, key)
        if value is not None and value < low:
            raise UserError(f"config key '{section}.{key}' must be at least {low}, got {value}")
    for key in fractions:
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"config key '{section}.{key}' must be in [0, 1), got {getattr(cfg, key)}")


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
