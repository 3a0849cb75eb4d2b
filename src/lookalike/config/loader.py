"""Loading settings: ``conf/base.yaml`` holds every default; a profile (``conf/<profile>.yaml``)
overrides part of it; environment variables override both:

* ``LOOKALIKE_HOME``: root for the Delta warehouse, MLflow store and artifacts.
* ``LOOKALIKE_PROFILE``: profile used when none is passed explicitly.
* ``LOOKALIKE__SECTION__KEY=value``: any single setting (value parsed as YAML).

Every value is type-checked when loaded, so a wrong value fails at start with the key named.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from lookalike.config.schema import ConfigError, deep_merge, set_path  # noqa: F401
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
    choices = profile_names(directory)
    if profile not in choices:  # a name, never a path or the search space's file
        raise ConfigError(f"config error at 'profile': unknown profile {profile!r}; "
                          f"choose one of {choices}")
    if profile != "base":
        data = deep_merge(data, _read_yaml(directory / f"{profile}.yaml"))
    layers = [("environment", _environment_overrides(environ)), ("overrides", overrides or {})]
    for source, layer in layers:
        # The profile names the files the values came from (and keys tuned parameters):
        # changing the label alone would make base values pass for the profile's.
        if "profile" in layer:
            raise ConfigError(f"config error at 'profile': set by {source}; choose a profile "
                              "with --profile or LOOKALIKE_PROFILE instead")
        data = deep_merge(data, layer)
    data["profile"] = profile
    settings = settings_from_dict(data)
    check_search_space(settings)
    return settings


def profile_names(directory: Path | None = None) -> list[str]:
    """``base`` and every ``conf/<name>.yaml`` that is a profile (not a search space)."""
    directory = conf_dir() if directory is None else directory
    return ["base", *sorted(p.stem for p in directory.glob("*.yaml")
                            if p.stem != "base" and not p.stem.startswith("search_space"))]


def check_search_space(settings: Settings) -> None:
    """The tuning search space exists and names only model/training settings, and
    ``tuning.exclude_from_training`` names only searched ones: at start, not after Spark has
    started and every trial has failed in a worker."""
    key = "tuning.search_space_file"
    path = conf_dir() / settings.tuning.search_space_file
    if not path.is_file():
        raise ConfigError(f"config error at '{key}': no such file {str(path)!r}")
    space = load_search_space(settings)
    known = ({f.name for f in dataclasses.fields(settings.model)}
             | {f.name for f in dataclasses.fields(settings.training)})
    unknown = sorted(set(space) - known)
    if unknown:
        raise ConfigError(f"config error in {path}: {unknown} are not model or training "
                          "settings")
    stray = sorted(set(settings.tuning.exclude_from_training) - set(space))
    if stray:
        raise ConfigError(f"config error at 'tuning.exclude_from_training': {stray} are not "
                          f"in the search space {path.name} ({sorted(space)})")


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
        if keys:
            set_path(result, keys, value, "the environment")
    return result



