"""Package a trained model with its index as the ``lookalike`` pyfunc, register it, promote it.

* :func:`package_and_register` -- logs the pyfunc (:mod:`lookalike.serving`) in a run tagged
  ``lookalike.kind=package`` (param ``training_run_id``, the training run's metrics copied),
  registers it as ``registry.model_name``, points alias ``challenger`` at the new version and
  tags it ``training_run``, ``delta_version`` (products table version its embeddings came
  from), ``embeddings_version`` and ``index_size``.
* :func:`promote` -- moves alias ``champion`` to the challenger (or a given version) when its
  ``registry.promotion_metric`` (read from the version's training run; higher is better) is not
  worse than the champion's minus ``registry.promotion_tolerance``. The first version becomes
  champion. The decision and reason are returned and recorded as version tag
  ``lookalike.promotion``.

The registered name is configuration only: on Databricks Unity Catalog use a three-level name
(``catalog.schema.lookalike``) in ``registry.model_name``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd

from lookalike.config import Settings

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
PROMOTION_TAG = "lookalike.promotion"


def _thumbnails(max_side: int):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from lookalike.preprocessing import thumbnail_png

        for frame in batches:
            yield pd.DataFrame({
                "product_id": frame["product_id"], "category": frame["category"],
                "title": frame["title"],
                "thumbnail": [thumbnail_png(bytes(b), max_side) for b in frame["image"]],
            })
    return run


def write_products_file(settings: Settings, run_id: str, index_metadata: dict, path: Path
                        ) -> int:
    """Parquet of the indexed products (product_id, category, title, thumbnail PNG bytes),
    read at the Delta versions the index was built from. Returns the row count."""
    from pyspark.sql import functions as F

    from lookalike.catalogue import read_products
    from lookalike.spark import get_spark

    spark = get_spark(settings)
    products, _ = read_products(spark, settings,
                                version=int(index_metadata["products_version"]))
    embedded = (spark.read.format("delta")
                .option("versionAsOf", int(index_metadata["embeddings_version"]))
                .load(index_metadata["embeddings_table"])
                .where(F.col("model_version") == run_id).select("product_id"))
    rows = (products.join(embedded, "product_id", "inner")
            .select("product_id", "category", "title", "image")
            .mapInPandas(_thumbnails(settings.serving.thumbnail_size),
                         "product_id STRING, category STRING, title STRING, thumbnail BINARY")
            .toPandas())
    rows.to_parquet(path, index=False)
    return len(rows)


def package_and_register(settings: Settings, run_id: str | None = None) -> dict:
    """Log, register and alias-as-challenger the pyfunc of training run ``run_id`` (default:
    latest). Needs ``embed`` and ``build-index`` for that run first."""
    import mlflow

    from lookalike.embedding import index_dir, resolve_model
    from lookalike.serving import log_lookalike_model
    from lookalike.tracking import KIND_TAG, configure_mlflow

    configure_mlflow(settings)
    run_id, model_dir = resolve_model(settings, run_id)
    training = mlflow.get_run(run_id)
    index_path = index_dir(settings, run_id)
    manifest_path = index_path / "manifest.json"
    if not manifest_path.exists():
        raise ValueError(f"no index for training run {run_id} at {index_path}: run "
                         f"`lookalike embed --run-id {run_id}` and `lookalike build-index` first")
    manifest = json.loads(manifest_path.read_text())
    meta = manifest.get("metadata", {})
    if meta.get("model_version") != run_id:
        raise ValueError(f"index at {index_path} was built for model {meta.get('model_version')!r}"
                         f", not {run_id!r}: rerun build-index")
    name = settings.registry.model_name
    scratch = Path(tempfile.mkdtemp(prefix="lookalike-package-"))
    try:
        products_path = scratch / "products.parquet"
        n_products = write_products_file(settings, run_id, meta, products_path)
        with mlflow.start_run(run_name=f"package-{run_id[:8]}",
                              tags={KIND_TAG: "package", "lookalike.training_run": run_id}) as run:
            mlflow.log_params({"training_run_id": run_id,
                               "products_version": meta.get("products_version"),
                               "embeddings_version": meta.get("embeddings_version"),
                               "index_backend": manifest.get("backend"),
                               "index_size": manifest.get("count")})
            if training.data.metrics:
                mlflow.log_metrics(dict(training.data.metrics))
            info = log_lookalike_model(settings, model_dir, index_path, products_path)
            package_run = run.info.run_id
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tags = {"training_run": run_id, "delta_version": str(meta.get("products_version")),
            "embeddings_version": str(meta.get("embeddings_version")),
            "index_size": str(manifest.get("count")), "package_run": package_run}
    version = register_version(settings, info.model_uri, tags)
    result = {"model_name": name, "version": int(version.version),
              "logged_model_uri": info.model_uri,
              "model_uri": f"models:/{name}/{version.version}", "alias": CHALLENGER,
              "package_run_id": package_run, "training_run_id": run_id,
              "index_size": manifest.get("count"), "products": n_products,
              "delta_version": meta.get("products_version")}
    log.info("package_and_register: %s", result)
    return result


def register_version(settings: Settings, model_uri: str, tags: dict[str, str]):
    """Register ``model_uri`` as a new version of ``registry.model_name`` with ``tags``
    (``training_run`` is what promotion reads) and point alias ``challenger`` at it."""
    import mlflow

    name = settings.registry.model_name
    version = mlflow.register_model(model_uri, name, tags=tags)
    client = mlflow.MlflowClient()
    for key, value in tags.items():  # some registries ignore tags= on register_model
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return client.get_model_version(name, version.version)


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metric(client, version, metric: str) -> float | None:
    """``metric`` of a model version, from its ``training_run`` tag's run (else from the run
    that logged it, which holds copies of the training metrics); None if not logged."""
    from mlflow.exceptions import MlflowException

    run_id = version.tags.get("training_run") or version.run_id
    if not run_id:
        return None
    try:
        value = client.get_run(run_id).data.metrics.get(metric)
    except MlflowException:
        return None
    return None if value is None else float(value)


def _available_metrics(client, version) -> list[str]:
    run_id = version.tags.get("training_run") or version.run_id
    try:
        return sorted(client.get_run(run_id).data.metrics)
    except Exception:  # noqa: BLE001 - only for the error message
        return []


def promote(settings: Settings, version: str | int | None = None) -> dict:
    """Make ``version`` (default: the challenger) champion if it is not worse; say why."""
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    name = settings.registry.model_name
    metric = settings.registry.promotion_metric
    tolerance = settings.registry.promotion_tolerance
    if version is None:
        candidate = _alias(client, name, CHALLENGER)
        if candidate is None:
            raise ValueError(f"registered model {name!r} has no '{CHALLENGER}' alias: "
                             "run `lookalike package` first")
    else:
        candidate = client.get_model_version(name, str(version))
    champion = _alias(client, name, CHAMPION)
    value = version_metric(client, candidate, metric)
    result = {"model_name": name, "version": int(candidate.version), "metric": metric,
              "challenger_value": value, "champion_version": None, "champion_value": None,
              "tolerance": tolerance}
    if champion is not None:
        result["champion_version"] = int(champion.version)
    if champion is None:
        promoted, reason = True, "no champion yet: first version becomes champion"
    elif champion.version == candidate.version:
        promoted, reason = False, f"version {candidate.version} already is champion"
    else:
        if value is None:
            raise ValueError(f"version {candidate.version} has no metric {metric!r} "
                             f"(registry.promotion_metric); its training run logged "
                             f"{_available_metrics(client, candidate)}")
        best = version_metric(client, champion, metric)
        result["champion_value"] = best
        if best is None:
            promoted, reason = True, (f"champion v{champion.version} has no {metric}; "
                                      f"challenger has {value:.4f}")
        elif value >= best - tolerance:
            promoted, reason = True, (f"{metric} {value:.4f} >= champion v{champion.version}'s "
                                      f"{best:.4f} - tolerance {tolerance}")
        else:
            promoted, reason = False, (f"{metric} {value:.4f} < champion v{champion.version}'s "
                                       f"{best:.4f} - tolerance {tolerance}: champion kept")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        result["champion_version"] = int(candidate.version)
    client.set_model_version_tag(name, candidate.version, PROMOTION_TAG, reason)
    result.update(promoted=promoted, reason=reason)
    log.info("promote: %s", result)
    return result
