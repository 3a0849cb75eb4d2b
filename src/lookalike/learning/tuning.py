"""``lookalike tune``: Hyperopt TPE over ``conf/search_space.yaml`` with ``SparkTrials``.

* One MLflow parent run tagged ``lookalike.kind=tune``; every trial is a child run (tag
  ``mlflow.parentRunId``, ``lookalike.kind=tune_trial``) created from inside the Spark worker
  with an ``MlflowClient`` pointed explicitly at the tracking URI (workers are separate Python
  processes and inherit no active run).
* Objective: MAP@R of **validation** queries (at most ``tuning.max_validation_queries``, seeded
  sample) against the train-split catalogue; the test split is never read. Hyperopt minimises
  ``-MAP@R``. Which categories a trial trains on, asks about and searches is
  :func:`tuning_plan`: ``tuning.objective`` a (in-distribution) or b (class-disjoint), and
  never ``evaluation.unseen_categories`` when protocol (b) is on.
* Data: the train/val splits are decoded once on the driver side into ``.npy`` files under
  ``LOOKALIKE_HOME/cache/arrays`` (:mod:`lookalike.data`); each trial memory-maps them, so no
  trial touches Delta. (Tuning therefore needs a catalogue that fits in memory.) The search
  itself (:func:`search`) takes any such training data and validation folder: a
  cross-validation benchmark tunes each fold on the fold's own photos.
* Each trial trains ``tuning.epochs`` epochs with the trial's parameters (head-only warm-up
  and fine-tuning in the profile's proportions: :func:`trial_schedule`), using
  ``cores / parallelism`` threads (TensorFlow's and the scoring's) so parallel trials share
  the machine.
* Result: the best trial (argmin loss over the children) is logged on the parent as params
  ``best.<name>``, metric ``best_val_map_at_r``, tag ``lookalike.best_trial_run_id`` and the
  artifact ``best_params.json`` (read by :func:`lookalike.training.train_and_log`).

Search-space file format: ``name: {loguniform: [low, high]}``, ``{uniform: [low, high]}``,
``{quniform: [low, high, q]}`` or ``{choice: [v1, v2, ...]}``; names are ``model.*`` or
``training.*`` setting names.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.config import Settings
from lookalike.console import say
from lookalike.learning.params import TUNING_KEY_TAG, tuning_key

TRIAL_KIND = "tune_trial"
# Why the tune step does nothing in a profile with ``tuning.enabled: false``.
TUNING_OFF = ("tuning.enabled is false in this profile: training uses its own values "
              "(tuning.enabled=true, for tune and train alike, searches anyway)")
BEST_TRIAL_TAG = "lookalike.best_trial_run_id"
_INT_FIELDS = {"embedding_size", "width", "epochs", "steps_per_epoch", "classes_per_batch",
               "examples_per_class"}




def trial_schedule(settings: Settings) -> dict[str, int]:
    """A trial's epochs, and of them how many train the head alone: the same share as the
    profile's own schedule, so a profile that fine-tunes its backbone is tuned fine-tuning (at
    least one epoch of each), never on a frozen backbone whose parameters it then ships."""
    epochs, warmup = settings.tuning.epochs, settings.training.warmup_epochs
    # Shorter trial epochs (tuning.steps_per_epoch, a cap) make cheaper trials: the quick
    # profile's. A smaller training epoch (a test's, a rehearsal's) stays the smaller.
    cap, steps_per_epoch = settings.tuning.steps_per_epoch, settings.training.steps_per_epoch
    steps = {"steps_per_epoch": cap} if 0 < cap < steps_per_epoch else {}
    if warmup <= 0:
        return {"epochs": epochs, "warmup_epochs": 0, **steps}
    if epochs < 2:
        raise ValueError("tuning.epochs must be >= 2 when training.warmup_epochs > 0: a trial "
                         "needs an epoch of head-only training and one of fine-tuning")
    share = round(warmup * epochs / settings.training.epochs)
    return {"epochs": epochs, "warmup_epochs": min(max(1, share), epochs - 1), **steps}


def startup_trials(max_evals: int) -> int:
    """Random trials before TPE models the results: half the budget (1 at least, 20 at most)."""
    return max(1, min(20, max_evals // 2))


@dataclasses.dataclass(frozen=True)
class TuningPlan:
    """Categories a trial trains on, asks about (val split) and searches (train split)."""

    train: tuple[str, ...]
    queries: tuple[str, ...]
    catalogue: tuple[str, ...]


def tuning_plan(settings: Settings, categories) -> TuningPlan:
    """Who reads which classes during tuning.

    With protocol (b) on (``evaluation.generalisation``), ``evaluation.unseen_categories`` are
    invisible to tuning: not trained on, not asked about, not in the catalogue searched, so
    protocol (b)'s figures stay a test of classes nothing was chosen on. Objective ``b`` also
    holds ``tuning.validation_categories`` out of the trials' training and asks about them
    only (class-disjoint validation).
    """
    from lookalike.learning.data import resolve_train_categories
    from lookalike.learning.evaluation import unseen_problem

    ev, t = settings.evaluation, settings.tuning
    held_out: set[str] = set()
    if ev.generalisation and unseen_problem(ev.unseen_categories, categories) is None:
        held_out = set(ev.unseen_categories)
    visible = tuple(c for c in categories if c not in held_out)
    train = tuple(c for c in resolve_train_categories(settings, categories) if c not in held_out)
    queries = train
    if t.objective == "b":
        unknown = sorted(set(t.validation_categories) - set(visible))
        if unknown:
            raise ValueError(f"tuning.validation_categories {unknown} are not categories tuning "
                             f"may read; choose among {list(visible)} (the catalogue's "
                             "categories minus evaluation.unseen_categories)")
        queries = tuple(c for c in visible if c in set(t.validation_categories))
        train = tuple(c for c in train if c not in set(queries))
    if len(train) < 2:
        raise ValueError(f"tuning would train on {list(train)}: metric learning needs at least 2 "
                         "categories; hold fewer out (tuning.validation_categories)")
    return TuningPlan(train, queries, visible)


def build_space(description: dict[str, Any]) -> dict[str, Any]:
    """Translate the YAML description into hyperopt expressions."""
    from hyperopt import hp

    space = {}
    for name, spec in description.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ValueError(f"search space entry {name!r} must be one {{kind: args}} mapping")
        (kind, args), = spec.items()
        if kind == "loguniform":
            low, high = args
            space[name] = hp.loguniform(name, math.log(low), math.log(high))
        elif kind == "uniform":
            low, high = args
            space[name] = hp.uniform(name, low, high)
        elif kind == "quniform":
            low, high, q = args
            space[name] = hp.quniform(name, low, high, q)
        elif kind == "choice":
            if not isinstance(args, list) or not args:
                raise ValueError(f"search space entry {name!r}: choice needs a non-empty list")
            space[name] = hp.choice(name, args)
        else:
            raise ValueError(f"search space entry {name!r}: unknown distribution {kind!r}; "
                             "use loguniform, uniform, quniform or choice")
    return space


def clean_params(params: dict[str, Any]) -> dict[str, Any]:
    """Plain Python values (hyperopt gives numpy scalars and floats for quniform ints)."""
    out = {}
    for name, value in params.items():
        if hasattr(value, "item"):
            value = value.item()
        if name in _INT_FIELDS and isinstance(value, float):
            value = int(round(value))
        out[name] = value
    return out


def run_trial(settings_dict: dict, spec_dict: dict, val_dir: str, plan: TuningPlan,
              params: dict[str, Any], parent_run_id: str, tracking_uri: str,
              experiment_id: str, threads: int, worker_env: dict | None = None) -> dict:
    """One Hyperopt evaluation (runs inside a Spark Python worker). Returns a hyperopt result.
    ``worker_env`` (:func:`lookalike.tracking.tracking_environment` and
    :func:`lookalike.runtime.tensorflow_environment`) reaches the tracking server, and loads
    TensorFlow as the driver does, from a worker that has none of the driver's configuration."""
    os.environ.update(worker_env or {})
    from hyperopt import STATUS_OK
    from mlflow import MlflowClient

    from lookalike.config import settings_from_dict
    from lookalike.learning.data import DataSpec, read_split_dir
    from lookalike.learning.distributed import train_embedding
    from lookalike.learning.encoded import map_chunks
    from lookalike.learning.evaluation import sample_rows
    from lookalike.learning.metrics import retrieval_metrics
    from lookalike.learning.model import embedding_network
    from lookalike.learning.params import apply_params
    from lookalike.tracking import KIND_TAG

    params = clean_params(params)
    base = settings_from_dict(settings_dict)
    # A steps_per_epoch searched as a budget knob (exclude_from_training) wins over the setting.
    schedule = {k: v for k, v in trial_schedule(base).items()
                if not (k == "steps_per_epoch" and k in params)}
    settings = apply_params(base, params).replace(training=schedule)
    spec = DataSpec.from_dict(spec_dict)
    client = MlflowClient(tracking_uri=tracking_uri)
    child = client.create_run(experiment_id, tags={
        "mlflow.parentRunId": parent_run_id, KIND_TAG: TRIAL_KIND,
        "mlflow.runName": "trial-" + "-".join(f"{k}={v}" for k, v in sorted(params.items()))[:200],
    })
    run_id = child.info.run_id
    started = time.time()
    try:
        for name, value in params.items():
            client.log_param(run_id, name, value)
        trained_on = ",".join(spec.categories[i] for i in spec.train_label_ids)
        client.log_param(run_id, "trained_on", trained_on[:500])
        with tempfile.TemporaryDirectory() as tmp:
            result = train_embedding(dataclasses.asdict(settings), spec_dict, tmp,
                                     mlflow_run_id=run_id, tracking_uri=tracking_uri,
                                     threads=threads, keep_model=True)
        network = embedding_network(result["model"], settings)
        size, _, channels = spec.image_shape
        train = read_split_dir(spec.arrays_dir, size, channels)
        train = train.subset(np.isin(train.labels, plan.catalogue))
        # Every trial searches the same seeded sample: trials are ranked on equal terms, and
        # a capped catalogue (tuning.max_catalogue_items) is most of a cheap trial's saving.
        if settings.tuning.max_catalogue_items:
            train = train.subset(sample_rows(len(train), settings.tuning.max_catalogue_items,
                                             settings.training.seed + 1))
        val = read_split_dir(val_dir, size, channels)
        rows = np.flatnonzero(np.isin(val.labels, plan.queries))
        rows = rows[sample_rows(len(rows), settings.tuning.max_validation_queries,
                                settings.training.seed)]
        batch = settings.embedding.batch_size

        def embed(x):
            return network.predict(x, batch_size=batch, verbose=0)
        catalogue = map_chunks(embed, train.x)
        queries = map_chunks(embed, val.subset(rows).x)
        report = retrieval_metrics(queries, val.labels[rows], catalogue, train.labels,
                                   k_values=settings.evaluation.k_values,
                                   distance=settings.model.distance, threads=threads)
        map_at_r = float(report.map_at_r)
        metrics = {f"val_{k}": v for k, v in report.as_flat_dict().items()}
        metrics["trial_seconds"] = time.time() - started
        metrics["val_n_queries"] = float(len(rows))
        metrics["val_catalogue_items"] = float(len(train))
        for name, value in metrics.items():
            client.log_metric(run_id, name, float(value))
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return {"loss": -map_at_r, "status": STATUS_OK, "val_map_at_r": map_at_r,
            "run_id": run_id, "params": params, "start": started, "end": time.time()}


def tune(settings: Settings, max_evals: int | None = None, parallelism: int | None = None,
         tags: dict | None = None) -> dict:
    """Run the search on the catalogue's train and val splits and return ``{"run_id",
    "best_params", "best_val_map_at_r", ...}`` (:func:`search`)."""
    from lookalike.config import load_search_space
    from lookalike.learning.data import (list_categories, load_split, prepare_training_data,
                                         split_dir)
    from lookalike.spark import get_spark
    from lookalike.tracking import configure_mlflow

    build_space(load_search_space(settings))  # a bad space fails before the splits are built
    configure_mlflow(settings)  # in the environment Spark's JVM inherits (trials: worker_env)
    spark = get_spark(settings)
    categories, version = list_categories(spark, settings)
    plan = tuning_plan(settings, categories)
    settings = settings.replace(training={"train_categories": list(plan.train)})
    spec = prepare_training_data(spark, settings, version, mode="memory")
    val = load_split(spark, settings, "val", spec.products_version)
    if not np.isin(val.labels, plan.queries).any():
        raise ValueError(f"the validation split has no image of {list(plan.queries)}: nothing "
                         "to score tuning trials on (tuning.validation_categories)")
    val_dir = str(split_dir(settings, "val", spec.products_version))
    return search(settings, spec, val_dir, plan, spark, max_evals, parallelism, tags)


def search(settings: Settings, spec, val_dir: str, plan: TuningPlan, spark,
           max_evals: int | None = None, parallelism: int | None = None,
           tags: dict | None = None, kind: str = "tune") -> dict:
    """The Hyperopt search itself, on any training data: ``spec`` (a memory-mode
    :class:`~lookalike.learning.data.DataSpec` whose categories ``plan`` trains on) and the
    validation split cached in ``val_dir``. :func:`tune` runs it on the catalogue's splits; a
    cross-validation benchmark runs it on a fold's own (``benchmarks/bench_photos_cv.py``) as
    another ``kind`` of parent run, which ``lookalike train`` never takes for a tuning run."""
    import mlflow
    from hyperopt import SparkTrials, fmin, tpe

    from lookalike.config import load_search_space
    from lookalike.runtime import cpu_count, tensorflow_environment
    from lookalike.tracking import KIND_TAG, configure_mlflow, tracking_environment

    experiment_id = configure_mlflow(settings)
    max_evals = int(max_evals or settings.tuning.max_evals)
    requested = settings.tuning.parallelism if parallelism is None else parallelism
    parallelism = int(requested) or spark.sparkContext.defaultParallelism or cpu_count()
    description = load_search_space(settings)
    space = build_space(description)
    threads = max(1, cpu_count() // min(parallelism, max_evals))
    settings_dict = dataclasses.asdict(settings)
    spec_dict = spec.to_dict()
    tracking_uri = settings.tracking_uri
    # Trials run in Spark workers: they reach the tracking server through this environment
    # (on a cluster: the workspace host and a token), never through a path on the driver, and
    # load TensorFlow as the driver would (Keras 2, oneDNN).
    worker_env = {**tensorflow_environment(), **tracking_environment(settings)}

    with mlflow.start_run(tags={KIND_TAG: kind,
                                "lookalike.products_version": str(spec.products_version),
                                TUNING_KEY_TAG: tuning_key(settings, spec.products_version),
                                **(tags or {})}
                          ) as run:
        parent = run.info.run_id
        mlflow.log_params({"max_evals": max_evals, "parallelism": parallelism,
                           "tuning_epochs": settings.tuning.epochs,
                           "trial_steps_per_epoch": trial_schedule(settings).get(
                               "steps_per_epoch", settings.training.steps_per_epoch),
                           "trial_catalogue_items": settings.tuning.max_catalogue_items or "all",
                           "objective": settings.tuning.objective,
                           "trial_categories": ",".join(plan.train)[:500],
                           "query_categories": ",".join(plan.queries)[:500],
                           "search_space": json.dumps(description)[:500]})

        def objective(params):
            return run_trial(settings_dict, spec_dict, val_dir, plan, params, parent,
                             tracking_uri, experiment_id, threads, worker_env)

        trials = SparkTrials(parallelism=parallelism, spark_session=spark)
        say("tune", f"{max_evals} trials, {parallelism} in parallel")
        # TPE draws its first n_startup_jobs at random (hyperopt's default: 20, more than the
        # whole budget): half the budget explores, the rest is guided by it.
        algo = functools.partial(tpe.suggest, n_startup_jobs=startup_trials(max_evals))
        fmin(objective, space, algo=algo, max_evals=max_evals, trials=trials,
             rstate=np.random.default_rng(settings.training.seed), show_progressbar=False)
        finished = [r for r in trials.results if r.get("status") == "ok"]
        if not finished:
            raise RuntimeError("no tuning trial finished; see the Spark worker logs")
        best = min(finished, key=lambda r: r["loss"])
        best_params = best["params"]
        mlflow.log_params({f"best.{k}": v for k, v in best_params.items()})
        mlflow.log_metric("best_val_map_at_r", best["val_map_at_r"])
        mlflow.set_tag(BEST_TRIAL_TAG, best["run_id"])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "best_params.json"
            path.write_text(json.dumps(best_params, indent=2, sort_keys=True), encoding="utf-8")
            mlflow.log_artifact(str(path))
    return {"run_id": parent, "best_params": best_params,
            "best_val_map_at_r": best["val_map_at_r"], "best_trial_run_id": best["run_id"],
            "trials": len(finished), "parallelism": parallelism,
            "trial_run_ids": [r["run_id"] for r in finished]}
