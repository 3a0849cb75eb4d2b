"""Typed construction of settings from plain mappings: unknown, missing and mistyped values are
refused with the key named (``config error at 'training.learning_rate': expected a number``)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config error at '{key}': {message}")


def build(cls: type, data: Any, path: str, use_defaults: bool = False) -> Any:
    """Construct dataclass ``cls`` from a mapping, checking keys and types recursively.

    ``use_defaults``: fields with a default may be left out (plug-in parameter dataclasses);
    settings sections may not, so conf/base.yaml stays the one list of every setting.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config error at '{path or 'root'}': expected a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"config error at '{where}': unknown key; known keys: {sorted(names)}")
    optional = {f.name for f in dataclasses.fields(cls)
                if use_defaults and (f.default is not dataclasses.MISSING
                                     or f.default_factory is not dataclasses.MISSING)}
    missing = sorted(names - set(data) - optional)
    if missing:
        where = f"{path}.{missing[0]}" if path else missing[0]
        raise ConfigError(f"config error at '{where}': missing key (add it to conf/base.yaml)")
    kwargs = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        kwargs[name] = coerce(hints[name], value, key)
    return cls(**kwargs)


def coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config error at '{key}': expected a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config error at '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config error at '{key}': expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config error at '{key}': expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config error at '{key}': expected a number, got {value!r}")
        # YAML's .inf and .nan: no setting means "unbounded" (an infinite tolerance would
        # switch the promotion gate off unnoticed).
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float's range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"config error at '{key}': expected a finite number, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config error at '{key}': expected a string, got {value!r}")
        return value
    return value


def set_path(tree: dict[str, Any], keys: list[str], value: Any, source: str) -> None:
    """``tree[k1][k2]... = value``, making the mappings on the way; a key already set to a
    value, not a mapping, is an error that names it (``source``: where the pair came from)."""
    node = tree
    for depth, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config error at '{'.'.join(keys[:depth + 1])}': {source} sets "
                              "it to a value and a key under it")
    node[keys[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, nested mappings key by key (neither is changed)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
