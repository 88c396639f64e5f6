"""Dataclass configs loaded from YAML, with strict ``--section.key=value`` overrides.

Unknown keys are errors everywhere (in YAML files and on the command line): a typo
must never silently train the wrong model. Every number declares its valid range with
:func:`bounded` (``Literal`` fields declare their choices), checked whenever a config is
built from data, so a bad value fails in one line naming the key, the value and the range
before any process group or data is touched. Numbers may be written ``3e-3``, ``1E-3`` or
(for integers) ``1e3``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "bounded",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_yaml",
    "read_yaml_mapping",
    "dump_yaml",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


def bounded(default: Any, lo: float | None = None, hi: float | None = None, *,
            above: float | None = None) -> Any:
    """A dataclass field with a valid range: ``lo <= x <= hi`` and ``x > above`` (each
    optional); for a tuple field, every item."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi, above)})


def _range_text(lo: float | None, hi: float | None, above: float | None) -> str:
    parts = [f"> {above:g}"] if above is not None else []
    if lo is not None and hi is not None:
        parts.append(f"{lo:g}..{hi:g}")
    elif lo is not None:
        parts.append(f">= {lo:g}")
    elif hi is not None:
        parts.append(f"<= {hi:g}")
    return " and ".join(parts)


def _check_range(value: Any, rng: tuple, where: str) -> None:
    lo, hi, above = rng
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if (lo is not None and v < lo) or (hi is not None and v > hi) or \
                (above is not None and not v > above):
            raise ConfigError(f"{where}: {value!r} is out of range (valid: "
                              f"{_range_text(lo, hi, above)})")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`.

    One case per kind of annotation, in one place (each a few lines): splitting it would
    scatter the type rules a config value can meet.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (a, v) in pairs)
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, (str, float)) and not isinstance(value, bool):
            # "1e3" (a string to PyYAML) or 1000.0: an integer written as a float.
            try:
                f = float(value)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer():
                return int(f)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "3e-3" as a string; a float field takes it as the number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys of {cls.__name__}: {', '.join(sorted(types_))}"
        )
    ranges = {f.name: f.metadata["range"] for f in dataclasses.fields(cls)
              if "range" in f.metadata}
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, types_[name], key)
        if name in ranges and kwargs[name] is not None:
            _check_range(kwargs[name], ranges[name], key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Return a copy of `cfg` with ``--a.b=value`` overrides applied (values parsed as YAML)."""
    data = to_dict(cfg)
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"override {item!r} must look like --section.key=value")
        key, raw = item[2:].split("=", 1)
        parts = key.replace("-", "_").split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"override {item!r}: no config section {p!r}")
            node = node[p]
        if parts[-1] not in node:
            valid = ", ".join(sorted(node))
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r} (valid: {valid})")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return from_dict(type(cfg), data)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file = {}); ConfigError names the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Dataclass ``cls`` from a YAML file; unknown keys raise ConfigError naming the file."""
    path = Path(path)
    data = read_yaml_mapping(path)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_yaml(cfg: Any, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
