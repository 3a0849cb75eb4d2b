"""The pipeline's steps and :func:`run_pipeline`: ingest (Fashion-MNIST) -> tune -> train ->
evaluate -> embed -> build-index -> package/register -> promote.

Each step's ``inputs`` name exactly what would change its result (see :mod:`.engine`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from lookalike.catalogue.tables import catalogue_table
from lookalike.config import Settings
from lookalike.console import say
from lookalike.errors import UsageError
from lookalike.index import IndexManifest
from lookalike.learning.tuning import TUNING_OFF
from lookalike.pipeline.engine import Context, Step, run_steps
from lookalike.registry import CHAMPION


def _files_fingerprint(folders: list[Path], prefixes: tuple[str, ...]) -> list:
    found = []
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_file() and entry.name.startswith(prefixes):
                info = entry.stat()
                found.append([str(folder), entry.name, info.st_size, int(info.st_mtime)])
        if found:
            break
    return found


def _section(settings: Settings, *names: str) -> dict:
    return {name: dataclasses.asdict(getattr(settings, name)) for name in names}


def _table_version(settings: Settings, table: str) -> int | None:
    """Latest version of a path table, read without Spark (None: absent or managed, which
    makes the steps that check it run again)."""
    return catalogue_table(settings, table).version_without_spark()


def _products_version(ctx: Context) -> int | None:
    ingest = ctx.outputs.get("ingest") or {}
    version = ingest.get("table_version")
    return version if version is not None else _table_version(ctx.settings, "products")


def _run_id(output: dict | None) -> str | None:
    if not output:
        return None
    for key in ("run_id", "parent_run_id", "tuning_run_id"):
        if output.get(key):
            return str(output[key])
    return None


def _run_exists(settings: Settings, run_id: str | None) -> bool:
    if not run_id:
        return True
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    try:
        return mlflow.get_run(run_id).info.status == "FINISHED"
    except Exception:
        return False


def _model_version_exists(settings: Settings, version: Any) -> bool:
    if version in (None, ""):
        return True
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    try:
        mlflow.MlflowClient().get_model_version(settings.registry.model_name, str(version))
        return True
    except Exception:
        return False


def _search_space_text(settings: Settings) -> str:
    from lookalike.config import conf_dir

    try:
        return (conf_dir() / settings.tuning.search_space_file).read_text(encoding="utf-8")
    except OSError:
        return ""


def _ingest(ctx: Context) -> dict:
    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.spark import get_spark

    summary = ingest_fashion_mnist(get_spark(ctx.settings), ctx.settings)
    return dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else dict(summary)


def _ingest_inputs(ctx: Context) -> dict:
    s = ctx.settings
    folders = [Path(s.catalogue.fashion_mnist_dir), s.home_path / "downloads" / "fashion-mnist"]
    catalogue = dataclasses.asdict(s.catalogue)
    catalogue.pop("embeddings_table")
    catalogue.pop("neighbours_table")
    return {"source": "fashion-mnist",
            "files": _files_fingerprint(folders, ("train-", "t10k-")),
            "catalogue": catalogue, "table": str(catalogue_table(s, "products"))}


def _ingest_valid(ctx: Context, output: dict) -> bool:
    return _table_version(ctx.settings, "products") == output.get("table_version")


def _tune(ctx: Context) -> dict:
    from lookalike.learning.tuning import tune

    result = tune(ctx.settings)
    return result if isinstance(result, dict) else {"result": result}


def _tune_inputs(ctx: Context) -> dict:
    return {"products_version": _products_version(ctx),
            **_section(ctx.settings, "tuning", "training", "model", "image"),
            "search_space": _search_space_text(ctx.settings)}


def _tuning_on(ctx: Context) -> bool:
    return not ctx.skip_tuning and ctx.settings.tuning.enabled


def _tuned_run(ctx: Context) -> str | None:
    """The tune step's run, whose parameters train applies; None when tuning is off (a run an
    earlier pipeline recorded is not applied then)."""
    return _run_id(ctx.outputs.get("tune")) if _tuning_on(ctx) else None


def _train(ctx: Context) -> dict:
    from lookalike.learning.training import train_and_log

    return train_and_log(ctx.settings, params_run_id=_tuned_run(ctx), use_tuned=True)


def _train_inputs(ctx: Context) -> dict:
    # Tuning off changes what train applies (no latest tuning run): it retrains. Said only
    # when off, so that the pipelines of profiles that tune keep their fingerprints.
    off = {} if ctx.settings.tuning.enabled else {"tuning_enabled": False}
    return {"products_version": _products_version(ctx), "params_run_id": _tuned_run(ctx),
            **off, **_section(ctx.settings, "training", "model", "image")}


def _train_run(ctx: Context) -> str:
    run_id = _run_id(ctx.outputs.get("train"))
    if not run_id:
        raise RuntimeError("the train step returned no run_id")
    return run_id


def _evaluate(ctx: Context) -> dict:
    from lookalike.learning.evaluation import evaluate_run

    result = evaluate_run(ctx.settings, _train_run(ctx))
    return result if isinstance(result, dict) else {"result": result}


def _embed(ctx: Context) -> dict:
    from lookalike.embeddings import embed_catalogue

    return embed_catalogue(ctx.settings, run_id=_train_run(ctx))


def _embed_valid(ctx: Context, output: dict) -> bool:
    return _table_version(ctx.settings, "embeddings") == output.get("table_version")


def _build_index(ctx: Context) -> dict:
    from lookalike.index.build import build_index

    return build_index(ctx.settings, run_id=_train_run(ctx))


def _index_valid(ctx: Context, output: dict) -> bool:
    path = output.get("path")
    return not path or IndexManifest.exists(path)


def _package(ctx: Context) -> dict:
    from lookalike.serving.package import package_and_register

    return package_and_register(ctx.settings, run_id=_train_run(ctx))


def _validate(ctx: Context) -> dict:
    from lookalike.serving.validation import validate_version

    return validate_version(ctx.settings, version=(ctx.outputs.get("package") or {}).get("version"))


def _promote(ctx: Context) -> dict:
    from lookalike.registry import promote

    version = (ctx.outputs.get("package") or {}).get("version")
    result = promote(ctx.settings, version=None if version is None else str(version))
    return result if isinstance(result, dict) else {"result": result}


def default_steps() -> list[Step]:
    """The pipeline: each step's inputs name exactly what would change its result."""
    s = lambda ctx: ctx.settings  # noqa: E731
    return [
        Step("ingest", _ingest_inputs, _ingest, _ingest_valid,
             enabled=lambda ctx: s(ctx).catalogue.pipeline_ingest == "fashion-mnist",
             disabled_reason="catalogue.pipeline_ingest is none: the catalogue `lookalike "
                             "ingest` wrote is used as it is"),
        Step("tune", _tune_inputs, _tune,
             lambda ctx, out: _run_exists(s(ctx), _run_id(out)),
             enabled=_tuning_on,
             disabled_reason=lambda ctx: "--skip-tuning" if ctx.skip_tuning else TUNING_OFF),
        Step("train", _train_inputs, _train,
             lambda ctx, out: _run_exists(s(ctx), _run_id(out))),
        Step("evaluate",
             lambda ctx: {"run_id": _train_run(ctx), **_section(s(ctx), "evaluation")},
             _evaluate, enabled=_needs_evaluation,
             disabled_reason="the train step already evaluated and logged the metrics"),
        Step("embed",
             lambda ctx: {"run_id": _train_run(ctx), "products_version": _products_version(ctx),
                          **_section(s(ctx), "embedding", "image"),
                          "table": str(catalogue_table(s(ctx), "embeddings"))},
             _embed, _embed_valid),
        Step("build-index",
             lambda ctx: {"run_id": _train_run(ctx),
                          "embeddings_version": (ctx.outputs.get("embed") or {}).get(
                              "table_version"),
                          **_section(s(ctx), "index")},
             _build_index, _index_valid),
        Step("package",
             # products_version: a title-only change re-packages (its metadata is packaged).
             lambda ctx: {"run_id": _train_run(ctx), "products_version": _products_version(ctx),
                          "index": {k: (ctx.outputs.get("build-index") or {}).get(k)
                                    for k in ("path", "count", "embeddings_version")},
                          "evaluation": ctx.outputs.get("evaluate"),
                          **_section(s(ctx), "serving", "registry", "image")},
             _package, lambda ctx, out: _model_version_exists(s(ctx), out.get("version"))),
        Step("validate",
             lambda ctx: {"version": (ctx.outputs.get("package") or {}).get("version"),
                          **_section(s(ctx), "validation")},
             # A failed validation (e.g. no package registry reachable) is retried next run.
             _validate, lambda ctx, out: bool(out.get("passed"))
             and _model_version_exists(s(ctx), out.get("version"))),
        Step("promote",
             lambda ctx: {"version": (ctx.outputs.get("package") or {}).get("version"),
                          **_section(s(ctx), "registry")},
             _promote),
    ]


_NOT_METRICS = {"processes", "products_version", "run_id", "params_run_id", "data_path"}


def _numbers(output: dict | None) -> dict:
    return {k: v for k, v in (output or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_METRICS}


def _metrics(outputs: dict) -> dict:
    """Retrieval metrics of the model: the train step's (it evaluates), updated by evaluate's."""
    metrics = _numbers(outputs.get("train"))
    metrics.update(_numbers(outputs.get("evaluate")))
    return metrics


def _needs_evaluation(ctx: Context) -> bool:
    """train_and_log evaluates and logs the metrics itself; evaluate only if they are missing."""
    return ctx.settings.registry.promotion_metric not in (ctx.outputs.get("train") or {})


def serve_commands(settings: Settings) -> dict:
    uri = f"models:/{settings.registry.model_name}@{CHAMPION}"
    profile = f" --profile {settings.profile}" if settings.profile != "base" else ""
    return {
        "serve_command": f"lookalike serve{profile}",
        "mlflow_command": (f"MLFLOW_TRACKING_URI={settings.tracking_uri} mlflow models serve "
                           f"-m {uri} -h {settings.serving.host} -p {settings.serving.port} "
                           "--env-manager local"),
        "model_uri": uri,
    }


def run_pipeline(settings: Settings, force: bool = False, skip_tuning: bool = False,
                 steps: list[Step] | None = None) -> dict:
    """Run the pipeline, skipping unchanged steps; return a JSON-able summary.

    Summary: ``steps`` (status ran/skipped, reason, seconds per step), ``metrics``,
    ``run_id``, ``products_version``, ``model_name``, ``model_version``, ``alias``,
    ``promoted`` (the promote step's output), ``serve_command``, ``seconds``.
    """
    products = catalogue_table(settings, "products")
    if (settings.catalogue.pipeline_ingest == "none" and products.path is not None
            and products.version_without_spark() is None):
        raise UsageError(f"no catalogue at {products}: ingest yours first (`lookalike ingest "
                         f"--source folder PATH --metadata CSV --profile {settings.profile}`)")
    say("pipeline", f"profile {settings.profile}, home {settings.home_path}"
         + (", forced" if force else "") + (", skipping tuning" if skip_tuning else ""))
    result = run_steps(settings, steps if steps is not None else default_steps(), force=force,
                       skip_tuning=skip_tuning)
    outputs = result["outputs"]
    package = outputs.get("package") or {}
    promote = outputs.get("promote") or {}
    summary = {
        "profile": settings.profile,
        "home": str(settings.home_path),
        "steps": result["steps"],
        "metrics": _metrics(outputs),
        "run_id": _run_id(outputs.get("train")),
        "products_version": (outputs.get("ingest") or {}).get("table_version"),
        "model_name": settings.registry.model_name,
        "model_version": package.get("version"),
        # The alias the packaged version holds now: champion unless promotion kept the old one.
        "alias": ((CHAMPION if promote.get("champion_version") == package.get("version")
                   else "challenger") if promote else None),
        "promoted": promote,
        **serve_commands(settings),
        "seconds": result["seconds"],
    }
    return summary
