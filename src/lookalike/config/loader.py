"""Loading settings: ``conf/base.yaml`` holds every default; a profile (``conf/<profile>.yaml``)
overrides part of it; environment variables override both:

* ``LOOKALIKE_HOME``: root for the Delta warehouse, MLflow store and artifacts.
* ``LOOKALIKE_PROFILE``: profile used when none is passed explicitly.
* ``LOOKALIKE__SECTION__KEY=value``: any single setting (value parsed as YAML).

Every value is type-checked when loaded, so a wrong value fails at start with the key named.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import yaml

from lookalike.config.schema import ConfigError, deep_merge  # noqa: F401 (re-exported)
from lookalike.config.settings import Settings, settings_from_dict  # noqa: F401 (re-exported)

ENV_PREFIX = "LOOKALIKE__"


def conf_dir() -> Path:
    """The folder holding base.yaml: ``LOOKALIKE_CONF_DIR``, else ``conf/`` of the repository."""
    env = os.environ.get("LOOKALIKE_CONF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "conf"


def load_settings(profile: str | None = None, overrides: dict[str, Any] | None = None,
                  environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Load base.yaml, then the profile, then environment, then explicit overrides; validate."""
    environ = os.environ if environ is None else environ
    directory = conf_dir()
    data = _read_yaml(directory / "base.yaml")
    profile = profile or environ.get("LOOKALIKE_PROFILE") or "base"
    if profile != "base":
        path = directory / f"{profile}.yaml"
        if not path.exists():
            choices = sorted(p.stem for p in directory.glob("*.yaml")
                             if p.stem != "base" and not p.stem.startswith("search_space"))
            raise ConfigError(f"config error at 'profile': unknown profile {profile!r}; "
                              f"choose one of {['base', *choices]}")
        data = deep_merge(data, _read_yaml(path))
    data["profile"] = profile
    data = deep_merge(data, _environment_overrides(environ))
    if overrides:
        data = deep_merge(data, overrides)
    return settings_from_dict(data)


def load_search_space(settings: Settings) -> dict[str, Any]:
    """The Hyperopt search space description from ``conf/<tuning.search_space_file>``."""
    return _read_yaml(conf_dir() / settings.tuning.search_space_file)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config error in {path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config error in {path}: top level must be a mapping")
    return data


def _environment_overrides(environ: typing.Mapping[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if environ.get("LOOKALIKE_HOME"):
        result["home"] = environ["LOOKALIKE_HOME"]
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = result
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if keys:
            node[keys[-1]] = value
    return result



