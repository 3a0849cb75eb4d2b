"""Typed settings loaded from ``conf/*.yaml``.

``conf/base.yaml`` holds every default; a profile (``conf/<profile>.yaml``) overrides part of it;
environment variables override both:

* ``LOOKALIKE_HOME``: root for the Delta warehouse, MLflow store and artifacts.
* ``LOOKALIKE_PROFILE``: profile used when none is passed explicitly.
* ``LOOKALIKE__SECTION__KEY=value``: any single setting (value parsed as YAML).

Every value is type-checked when loaded, so a wrong value fails at start with the key named.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "LOOKALIKE__"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config error at '{key}': {message}")


@dataclass(frozen=True)
class SparkSettings:
    master: str
    app_name: str
    driver_memory: str
    shuffle_partitions: int
    # Local folder of Delta jars filled by `make setup`; empty = look in the venv, then Maven.
    jars_dir: str
    delta_version: str
    scala_version: str

    def validate(self, key: str) -> None:
        _require(self.shuffle_partitions > 0, f"{key}.shuffle_partitions", "must be > 0")


@dataclass(frozen=True)
class SplitSettings:
    """Fractions of products assigned to each split by a hash of product_id."""

    train: float
    val: float
    test: float

    def validate(self, key: str) -> None:
        for name in ("train", "val", "test"):
            _require(0.0 <= getattr(self, name) <= 1.0, f"{key}.{name}", "must be in [0, 1]")
        _require(abs(self.train + self.val + self.test - 1.0) < 1e-6, key, "fractions must sum to 1")


@dataclass(frozen=True)
class CatalogueSettings:
    database: str
    products_table: str
    rejects_table: str
    embeddings_table: str
    neighbours_table: str
    split: SplitSettings
    # Fashion-MNIST's official training set is split into train/val by this fraction.
    fashion_mnist_val_fraction: float
    fashion_mnist_dir: str
    fashion_mnist_url: str
    max_image_bytes: int
    # Decompression-bomb guard: decoded width * height above this is rejected.
    max_pixels: int
    allowed_formats: tuple[str, ...]
    ingest_partitions: int

    def validate(self, key: str) -> None:
        self.split.validate(f"{key}.split")
        _require(0.0 < self.fashion_mnist_val_fraction < 1.0, f"{key}.fashion_mnist_val_fraction",
                 "must be in (0, 1)")
        _require(self.max_image_bytes > 0, f"{key}.max_image_bytes", "must be > 0")
        _require(self.max_pixels > 0, f"{key}.max_pixels", "must be > 0")
        _require(self.ingest_partitions > 0, f"{key}.ingest_partitions", "must be > 0")
        known = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
        bad = [f for f in self.allowed_formats if f not in known]
        _require(not bad, f"{key}.allowed_formats", f"unknown formats {bad}; known: {sorted(known)}")


@dataclass(frozen=True)
class ImageSettings:
    """Model input geometry: every image is converted to size x size x channels in [0, 1]."""

    size: int
    channels: int

    def validate(self, key: str) -> None:
        _require(8 <= self.size <= 1024, f"{key}.size", "must be between 8 and 1024")
        _require(self.channels in (1, 3), f"{key}.channels", "must be 1 or 3")


@dataclass(frozen=True)
class ModelSettings:
    backbone: str
    embedding_size: int
    distance: str
    width: int
    augmentation: bool
    # For keras.applications backbones: "imagenet" where it can be loaded, else None.
    pretrained_weights: str | None

    def validate(self, key: str) -> None:
        _require(self.backbone in ("compact_cnn", "efficientnet_b0", "mobilenet_v2"),
                 f"{key}.backbone", "must be one of compact_cnn, efficientnet_b0, mobilenet_v2")
        _require(self.embedding_size > 0, f"{key}.embedding_size", "must be > 0")
        _require(self.distance in ("cosine", "l2"), f"{key}.distance", "must be 'cosine' or 'l2'")
        _require(self.width > 0, f"{key}.width", "must be > 0")


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int
    steps_per_epoch: int
    classes_per_batch: int
    examples_per_class: int
    learning_rate: float
    processes: int
    # memory: load the split into RAM; petastorm: stream from Delta; auto: by max_in_memory_rows.
    data_path: str
    max_in_memory_rows: int
    seed: int
    # Protocol (b): train only on these category names; empty = all categories.
    train_categories: tuple[str, ...]
    # Cosine learning-rate decay over epochs * steps_per_epoch (to 5% of the start value).
    cosine_decay: bool

    def validate(self, key: str) -> None:
        for name in ("epochs", "steps_per_epoch", "classes_per_batch", "examples_per_class",
                     "processes", "max_in_memory_rows"):
            _require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        _require(0.0 < self.learning_rate < 1.0, f"{key}.learning_rate", "must be in (0, 1)")
        _require(self.data_path in ("auto", "memory", "petastorm"), f"{key}.data_path",
                 "must be auto, memory or petastorm")


@dataclass(frozen=True)
class EvaluationSettings:
    k_values: tuple[int, ...]
    # Protocol (b): categories held out of training, queried against the full catalogue.
    unseen_categories: tuple[str, ...]
    max_queries: int
    plot_queries: int
    # Train a second model without unseen_categories during `train` for protocol (b).
    generalisation: bool

    def validate(self, key: str) -> None:
        _require(len(self.k_values) > 0 and all(k > 0 for k in self.k_values),
                 f"{key}.k_values", "must be a non-empty list of positive integers")
        _require(self.max_queries > 0, f"{key}.max_queries", "must be > 0")


@dataclass(frozen=True)
class TuningSettings:
    max_evals: int
    # 0 means one trial per local core.
    parallelism: int
    search_space_file: str
    # Steps per trial are usually fewer than for the final model.
    epochs: int
    max_validation_queries: int
    # Tuned parameters NOT carried into `train` (budget knobs such as steps_per_epoch).
    exclude_from_training: tuple[str, ...]

    def validate(self, key: str) -> None:
        _require(self.max_evals > 0, f"{key}.max_evals", "must be > 0")
        _require(self.parallelism >= 0, f"{key}.parallelism", "must be >= 0 (0 = local cores)")
        _require(self.epochs > 0, f"{key}.epochs", "must be > 0")


@dataclass(frozen=True)
class EmbeddingSettings:
    batch_size: int
    partitions: int

    def validate(self, key: str) -> None:
        _require(self.batch_size > 0, f"{key}.batch_size", "must be > 0")
        _require(self.partitions > 0, f"{key}.partitions", "must be > 0")


@dataclass(frozen=True)
class IndexSettings:
    backend: str
    hnsw_m: int
    ef_construction: int
    ef_search: int

    def validate(self, key: str) -> None:
        _require(self.backend in ("hnsw", "exact"), f"{key}.backend", "must be 'hnsw' or 'exact'")
        for name in ("hnsw_m", "ef_construction", "ef_search"):
            _require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")


@dataclass(frozen=True)
class ServingSettings:
    host: str
    port: int
    workers: int
    default_k: int
    max_k: int
    max_batch: int
    max_image_bytes: int
    max_pixels: int
    timeout_seconds: int
    # How long start_server waits for /ping (model + index load) before giving up.
    startup_timeout_seconds: int
    # Longest side of the PNG thumbnails packaged for include_images.
    thumbnail_size: int

    def validate(self, key: str) -> None:
        _require(self.startup_timeout_seconds > 0, f"{key}.startup_timeout_seconds", "must be > 0")
        _require(8 <= self.thumbnail_size <= 1024, f"{key}.thumbnail_size",
                 "must be between 8 and 1024")
        _require(0 < self.port < 65536, f"{key}.port", "must be a TCP port (1-65535)")
        _require(self.workers > 0, f"{key}.workers", "must be > 0")
        _require(0 < self.default_k <= self.max_k, f"{key}.default_k", "must be in (0, max_k]")
        _require(self.max_batch > 0, f"{key}.max_batch", "must be > 0")
        _require(self.max_image_bytes > 0, f"{key}.max_image_bytes", "must be > 0")
        _require(self.max_pixels > 0, f"{key}.max_pixels", "must be > 0")


@dataclass(frozen=True)
class RegistrySettings:
    model_name: str
    promotion_metric: str
    # Champion is replaced only if challenger >= champion - tolerance.
    promotion_tolerance: float

    def validate(self, key: str) -> None:
        _require(bool(self.model_name), f"{key}.model_name", "must not be empty")
        _require(self.promotion_tolerance >= 0, f"{key}.promotion_tolerance", "must be >= 0")


@dataclass(frozen=True)
class MlflowSettings:
    # Empty = sqlite under LOOKALIKE_HOME (MLflow 3 refuses a plain file store); on
    # Databricks "databricks" is used automatically.
    tracking_uri: str
    registry_uri: str
    experiment: str

    def validate(self, key: str) -> None:
        _require(bool(self.experiment), f"{key}.experiment", "must not be empty")


@dataclass(frozen=True)
class Settings:
    profile: str
    home: str
    spark: SparkSettings
    catalogue: CatalogueSettings
    image: ImageSettings
    model: ModelSettings
    training: TrainingSettings
    evaluation: EvaluationSettings
    tuning: TuningSettings
    embedding: EmbeddingSettings
    index: IndexSettings
    serving: ServingSettings
    registry: RegistrySettings
    mlflow: MlflowSettings

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)

    # Derived locations: kept as properties so there is one source of truth (home).
    @property
    def home_path(self) -> Path:
        return Path(os.path.expanduser(self.home)).resolve()

    @property
    def warehouse_path(self) -> Path:
        return self.home_path / "warehouse"

    @property
    def artifacts_path(self) -> Path:
        return self.home_path / "artifacts"

    def table_path(self, table: str) -> str:
        """Filesystem location of a catalogue Delta table (path-based, no metastore needed)."""
        return str(self.warehouse_path / self.catalogue.database / table)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.home_path / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow.registry_uri or self.tracking_uri

    def replace(self, **sections: Any) -> "Settings":
        """Copy with whole sections or nested keys replaced: ``replace(training={"epochs": 1})``."""
        merged = _deep_merge(dataclasses.asdict(self), sections)
        return _build(Settings, merged, "")


def conf_dir() -> Path:
    """The folder holding base.yaml: ``LOOKALIKE_CONF_DIR``, else ``conf/`` of the repository."""
    env = os.environ.get("LOOKALIKE_CONF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "conf"


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
        data = _deep_merge(data, _read_yaml(path))
    data["profile"] = profile
    data = _deep_merge(data, _environment_overrides(environ))
    if overrides:
        data = _deep_merge(data, overrides)
    return _build(Settings, data, "")


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


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type, data: Any, path: str) -> Any:
    """Construct dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"config error at '{path or 'root'}': expected a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"config error at '{where}': unknown key; known keys: {sorted(names)}")
    missing = sorted(names - set(data))
    if missing:
        where = f"{path}.{missing[0]}" if path else missing[0]
        raise ConfigError(f"config error at '{where}': missing key (add it to conf/base.yaml)")
    kwargs = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, key)
    obj = cls(**kwargs)
    if cls is Settings:
        obj.validate()
    return obj


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config error at '{key}': expected a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value))
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
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config error at '{key}': expected a string, got {value!r}")
        return value
    return value
