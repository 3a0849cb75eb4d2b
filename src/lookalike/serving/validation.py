"""Validation of a packaged model version before promotion (``lookalike validate``).

In the spirit of mlops-stacks' model validation: a version is fit to serve when

1. **signature** -- its signature takes ``image`` / ``product_id`` and returns
   :data:`~lookalike.serving.recommender.OUTPUT_COLUMNS`, with the serving params;
2. **fresh environment** -- :func:`mlflow.models.predict` answers a real request in a new
   environment built from the model's own requirements (``validation.env_manager``; ``uv`` by
   default), so the package does not lean on the machine that built it;
3. **index/model consistency** -- catalogue images (read from the products table version the
   index was built from) embedded by the packaged network find themselves at rank 1 for at
   least ``validation.min_self_recall`` of ``validation.sample_size`` products: an index built
   by another network, or preprocessing that drifted, fails here;
4. **latency** -- the p50 of single-image queries in-process is under
   ``validation.max_latency_p50_ms`` (a sanity bound; BENCHMARKS.md has the real figures).

Every figure is logged to the version's package run (``validation_*`` metrics) and the verdict
to model version tag ``lookalike.validation`` (``passed: ...`` / ``failed: ...``), which
:func:`lookalike.registry.promote` reads.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike.config import Settings
from lookalike.console import say

log = logging.getLogger(__name__)

# A duplicate image elsewhere in the catalogue sits at the same point: that counts as found.
SAME_POINT = 1e-4


def check_signature(signature, expected_params: dict) -> list[str]:
    """Problems with a model signature (empty if it is the serving contract)."""
    from lookalike.serving.recommender import OUTPUT_COLUMNS

    if signature is None:
        return ["the model has no signature"]
    problems = []
    inputs = set(signature.inputs.input_names())
    if inputs != {"image", "product_id"}:
        problems.append(f"inputs {sorted(inputs)} != ['image', 'product_id']")
    outputs = set(signature.outputs.input_names())
    missing = [c for c in OUTPUT_COLUMNS if c not in outputs]
    if missing:
        problems.append(f"outputs lack {missing}")
    params = set() if signature.params is None else {p.name for p in signature.params.params}
    if not set(expected_params) <= params:
        problems.append(f"params lack {sorted(set(expected_params) - params)}")
    return problems


def self_recall(records: list[dict], product_ids: list[str]) -> float:
    """Share of image queries (row i = ``product_ids[i]``) whose nearest item is that product,
    or an identical image (distance below :data:`SAME_POINT`)."""
    top = {r["query"]: r for r in records if r["rank"] == 1}
    found = sum(1 for i, pid in enumerate(product_ids)
                if i in top and (top[i]["product_id"] == pid
                                 or float(top[i]["distance"]) < SAME_POINT))
    return found / max(1, len(product_ids))


def _predict_in_batches(model, frame: pd.DataFrame, max_batch: int) -> list[dict]:
    """Top-1 answers for every row of ``frame`` within the server's batch limit, with
    ``query`` numbered over the whole frame."""
    records = []
    for start in range(0, len(frame), max_batch):
        chunk = frame.iloc[start:start + max_batch].reset_index(drop=True)
        records += [{**r, "query": r["query"] + start}
                    for r in model.predict(chunk, params={"k": 1})]
    return records


def _catalogue_images(settings: Settings, provenance, ids: list[str]) -> dict[str, bytes]:
    """Stored image bytes of ``ids`` at the products version the index was built from."""
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import CatalogueTable
    from lookalike.spark import get_spark

    table = CatalogueTable.from_ref(provenance.products_table)
    rows = (table.read(get_spark(settings), versionAsOf=provenance.products_version)
            .where(F.col("product_id").isin(ids)).select("product_id", "image").collect())
    return {r["product_id"]: bytes(r["image"]) for r in rows}


def _fresh_environment_predict(model_uri: str, frame: pd.DataFrame, env_manager: str,
                               workdir: Path) -> list[dict]:
    import mlflow

    output = workdir / "fresh-env-prediction.json"
    # uv / virtualenv installed in this environment (pip install uv) live next to the
    # interpreter, which a job or `.venv/bin/python -m ...` does not always put on PATH.
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([path, bin_dir]) if path else bin_dir
    mlflow.models.predict(model_uri, input_data=frame, output_path=str(output),
                          env_manager=env_manager)
    answer = json.loads(output.read_text())
    return answer["predictions"] if isinstance(answer, dict) else answer


def _sample_queries(settings: Settings, artifacts: dict) -> tuple[list[str], pd.DataFrame, list]:
    """(sampled product ids, their stored images as image queries, every packaged id)."""
    from lookalike.index import IndexManifest
    from lookalike.serving.catalogue_file import ServingCatalogue
    from lookalike.serving.pyfunc import ARTIFACT_INDEX, ARTIFACT_PRODUCTS
    from lookalike.serving.recommender import b64

    provenance = IndexManifest.read(artifacts[ARTIFACT_INDEX]).provenance
    ids = ServingCatalogue(artifacts[ARTIFACT_PRODUCTS]).ids
    rng = np.random.default_rng(0)
    sample = sorted(str(i) for i in rng.choice(ids, min(settings.validation.sample_size,
                                                        len(ids)), replace=False))
    images = _catalogue_images(settings, provenance, sample)
    sample = [pid for pid in sample if pid in images]
    queries = pd.DataFrame({"image": [b64(images[p]) for p in sample],
                            "product_id": [None] * len(sample)})
    return sample, queries, ids


def _check_fresh_environment(model_uri: str, request: pd.DataFrame, env_manager: str,
                             workdir: Path) -> str:
    try:
        fresh = _fresh_environment_predict(model_uri, request, env_manager, workdir)
    except Exception as error:  # noqa: BLE001 - the failure is the finding
        return f"{type(error).__name__}: {str(error)[:300]}"
    answered = sorted({r["query"] for r in fresh})
    return "ok" if answered == list(range(len(request))) else f"answered queries {answered}"


def _latencies_ms(model, rows: list[pd.DataFrame], count: int) -> list[float]:
    timings = []
    for i in range(count):
        started = time.perf_counter()
        model.predict(rows[i % len(rows)])
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def _record(settings: Settings, found, checks: dict, metrics: dict, env_manager: str) -> bool:
    """Log the figures to the version's package run, tag the verdict; whether it passed."""
    import mlflow

    from lookalike.registry import VALIDATION_TAG

    failed = {k: v for k, v in checks.items() if v != "ok"}
    verdict = ("passed: " + ", ".join(checks) if not failed else
               "failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    client = mlflow.MlflowClient()
    metrics["validation_passed"] = float(not failed)
    if found.run_id:
        for key, value in metrics.items():
            client.log_metric(found.run_id, key, value)
        client.set_tag(found.run_id, "lookalike.validation_env_manager", env_manager)
        client.log_dict(found.run_id, checks, "validation/checks.json")
    client.set_model_version_tag(settings.registry.model_name, found.version, VALIDATION_TAG,
                                 verdict[:4000])
    return not failed


def validate_version(settings: Settings, version: str | int | None = None,
                     env_manager: str | None = None) -> dict:
    """Run the checks on ``version`` (default: the challenger), log them, tag the verdict."""
    import mlflow
    from mlflow.models import Model

    from lookalike.registry import CHALLENGER, model_version
    from lookalike.serving.pyfunc import packaged_artifacts
    from lookalike.serving.recommender import default_params

    cfg = settings.validation
    env_manager = env_manager or cfg.env_manager
    from mlflow.utils import env_manager as managers

    if env_manager == "uv" and not hasattr(managers, "UV"):
        import mlflow

        raise ValueError(f"MLflow {mlflow.__version__} has no uv environment manager: set "
                         "validation.env_manager to local (the Databricks bundle does: the job "
                         "cluster is itself a fresh environment) or virtualenv (needs pyenv)")
    found = model_version(settings, version, default_alias=CHALLENGER)
    name, number = settings.registry.model_name, found.version
    model_uri = f"models:/{name}/{number}"
    checks: dict[str, str] = {}
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lookalike-validate-") as tmp:
        model_path = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        problems = check_signature(Model.load(str(model_path)).signature,
                                   default_params(settings))
        checks["signature"] = "; ".join(problems) or "ok"
        sample, queries, ids = _sample_queries(settings, packaged_artifacts(model_path))

        say("validate", f"v{number}: prediction in a fresh {env_manager} environment")
        started = time.perf_counter()
        request = pd.concat([queries.head(1), pd.DataFrame({"image": [None],
                                                            "product_id": [ids[0]]})],
                            ignore_index=True)
        checks["fresh_environment"] = _check_fresh_environment(model_uri, request, env_manager,
                                                               Path(tmp))
        metrics["validation_fresh_env_seconds"] = time.perf_counter() - started

        say("validate", f"v{number}: consistency and latency of {len(sample)} catalogue images")
        model = mlflow.pyfunc.load_model(str(model_path))
        if sample:
            recall = self_recall(_predict_in_batches(model, queries, settings.serving.max_batch),
                                 sample)
            metrics["validation_self_recall_at_1"] = recall
            checks["consistency"] = ("ok" if recall >= cfg.min_self_recall else
                                     f"self-recall@1 {recall:.3f} < {cfg.min_self_recall}")
        else:
            checks["consistency"] = "no catalogue image of the index could be read"
        rows = ([queries.iloc[[i]].reset_index(drop=True) for i in range(len(queries))]
                or [request.iloc[[1]].reset_index(drop=True)])
        timings = _latencies_ms(model, rows, cfg.latency_queries)
        p50 = float(np.percentile(timings, 50))
        metrics.update(validation_latency_p50_ms=p50,
                       validation_latency_p95_ms=float(np.percentile(timings, 95)))
        checks["latency"] = ("ok" if p50 <= cfg.max_latency_p50_ms else
                             f"p50 {p50:.1f} ms > {cfg.max_latency_p50_ms} ms")

    passed = _record(settings, found, checks, metrics, env_manager)
    result = {"model_name": name, "version": int(number), "passed": passed,
              "env_manager": env_manager, "checks": checks,
              **{k: round(v, 4) for k, v in metrics.items()}}
    log.info("validate: %s", result)
    return result
