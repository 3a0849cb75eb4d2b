"""The ``lookalike`` command: parse arguments, load settings, call one library function.

``jobs/*.py`` call :func:`main` with their own sub-command, so Databricks jobs and the local
command share one argument parser.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Callable, Sequence

from lookalike.config import ConfigError, Settings, load_settings
from lookalike.config.schema import set_path
from lookalike.console import quiet_environment, quiet_libraries, say
from lookalike.errors import UsageError
from lookalike.runtime import prefer_onednn


class Skipped(Exception):
    """A job task with nothing to do yet (e.g. the nightly refresh before the first
    champion): said plainly, and the task succeeds."""


def _job_run(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise argparse.ArgumentTypeError(f"not a job run id: {value!r}")
    return value


RUN_ID_HELP = "training run (default: latest finished one; champion: the champion's)"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile",
                        help="settings profile: conf/<profile>.yaml (quick, full, photos)")
    common.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set training.epochs=2")
    common.add_argument("--job-run", type=_job_run, metavar="ID",
                        help="Databricks job run ({{job.run_id}}): tags the runs and model "
                             "version this task makes; without --run-id / --version, a later "
                             "task uses the ones made earlier in the same job run")
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: commands.add_parser(name, parents=[common], **kw)  # noqa: E731

    ingest = add("ingest", help="ingest product images into the Delta catalogue")
    ingest.add_argument("--source", choices=["fashion-mnist", "folder"], required=True)
    ingest.add_argument("path", nargs="?", help="image folder (with --source folder)")
    ingest.add_argument("--metadata", help="CSV with product_id, category, title, path")

    tune = add("tune", help="Hyperopt SparkTrials search, objective val MAP@R")
    tune.add_argument("--max-evals", type=int)
    tune.add_argument("--parallelism", type=int)

    train = add("train", help="train the embedding model (Horovod if N > 1)")
    train.add_argument("--processes", type=int, help="Horovod processes (default from config)")
    train.add_argument("--params-run-id", help="use the best parameters of this tuning run")
    train.add_argument("--no-tuned-params", action="store_true",
                       help="ignore the latest tuning result, train with configured values")

    evaluate = add("evaluate", help="retrieval metrics of a training run")
    evaluate.add_argument("--run-id", help=RUN_ID_HELP)

    embed = add("embed", help="embed new/changed products into Delta")
    embed.add_argument("--run-id", help=RUN_ID_HELP)

    index = add("build-index", help="build the ANN index from embeddings")
    index.add_argument("--run-id", help=RUN_ID_HELP)

    package = add("package", help="log pyfunc (model + index), register, "
                                                  "alias challenger")
    package.add_argument("--run-id", help=RUN_ID_HELP)

    validate = add("validate", help="check a packaged version before promotion")
    validate.add_argument("--version", help="model version (default: the challenger)")
    validate.add_argument("--env-manager", choices=["uv", "virtualenv", "local", "conda"],
                          help="environment of the test prediction (default: from config)")

    promote = add("promote", help="move alias champion to challenger if not worse")
    promote.add_argument("--version", help="model version (default: the challenger)")

    deploy = add("deploy", help="point the Databricks serving endpoint at the champion")
    deploy.add_argument("--dry-run", action="store_true",
                        help="print the request it would send, send nothing")

    recommend = add("recommend", help="top-k neighbours of every product to Delta")
    recommend.add_argument("--model-uri", help="default: models:/<name>@champion")
    recommend.add_argument("--k", type=int)

    serve = add("serve", help="REST endpoint: mlflow models serve of the champion")
    serve.add_argument("--model-uri", help="default: models:/<name>@champion")
    serve.add_argument("--port", type=int)

    pipeline = add("pipeline", help="ingest, tune, train, evaluate, embed, index, "
                                                    "package, promote (skips unchanged steps)")
    pipeline.add_argument("--force", action="store_true", help="rerun every step")
    pipeline.add_argument("--skip-tuning", action="store_true")

    add("app-sample", help="export the catalogue sample the demo app browses")

    demo = add("demo", help="pipeline, then REST server and Streamlit app")
    demo.add_argument("--no-pipeline", action="store_true", help="only start the servers")
    demo.add_argument("--app-port", type=int, default=8501)
    return parser


def _overrides(pairs: Sequence[str]) -> dict:
    import yaml

    result: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"config error: --set expects SECTION.KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"config error: --set expects SECTION.KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # as the environment's values: the typed check then names the key
        set_path(result, parts, value, "--set")
    return result


def _ingest(args, settings: Settings) -> dict:
    from lookalike.catalogue.ingest import ingest_fashion_mnist, ingest_folder
    from lookalike.spark import get_spark

    spark = get_spark(settings)
    if args.source == "fashion-mnist":
        return ingest_fashion_mnist(spark, settings).__dict__
    return ingest_folder(spark, settings, args.path, args.metadata).__dict__


def _tune(args, settings: Settings):
    from lookalike.learning.tuning import TUNING_OFF, tune
    from lookalike.tracking import job_tags

    if not settings.tuning.enabled:
        raise Skipped(TUNING_OFF)
    return tune(settings, max_evals=args.max_evals, parallelism=args.parallelism,
                tags=job_tags(args.job_run))


def _train(args, settings: Settings):
    from lookalike.learning.training import train_and_log
    from lookalike.tracking import job_tags

    return train_and_log(settings, processes=args.processes, params_run_id=args.params_run_id,
                         use_tuned=not args.no_tuned_params, tags=job_tags(args.job_run))


def _evaluate(args, settings: Settings):
    from lookalike.learning.evaluation import evaluate_run

    return evaluate_run(settings, _run_id(args, settings))


def _embed(args, settings: Settings):
    from lookalike.embeddings import embed_catalogue

    return embed_catalogue(settings, run_id=_run_id(args, settings))


def _build_index(args, settings: Settings):
    from lookalike.index.build import build_index

    return build_index(settings, run_id=_run_id(args, settings))


def _package(args, settings: Settings):
    from lookalike.serving.package import package_and_register
    from lookalike.tracking import job_tags

    return package_and_register(settings, run_id=_run_id(args, settings),
                                tags=job_tags(args.job_run))


def _run_id(args, settings: Settings) -> str | None:
    """``--run-id`` as given (``champion``: the champion's training run); without it, the
    training run of this job run (``--job-run``), else None (the latest)."""
    from lookalike.registry import resolve_run_id
    from lookalike.tracking import job_run_training

    if args.run_id == "champion":
        _require_champion(args, settings)
    if args.run_id:
        return resolve_run_id(settings, args.run_id)
    if args.job_run:
        return job_run_training(settings, args.job_run)
    return None


def _require_champion(args, settings: Settings) -> None:
    """In a job (``--job-run``) no champion yet means nothing to refresh: skip, don't fail;
    at a terminal it is an error that says how to make one."""
    from lookalike.registry import champion, require_champion

    if champion(settings) is None:
        if args.job_run:
            raise Skipped(f"{settings.registry.model_name} has no champion yet: the weekly "
                          "retrain makes the first one")
        require_champion(settings)  # raises, saying how to make one


def _version(args, settings: Settings) -> str | None:
    """``--version`` as given; without it, the version this job run packaged (``--job-run``),
    else None (the challenger)."""
    from lookalike.registry import version_of_job_run

    if args.version or not args.job_run:
        return args.version
    found = version_of_job_run(settings, args.job_run)
    if found is None:
        raise Skipped(f"job run {args.job_run} packaged no model version")
    return str(found.version)


def _validate(args, settings: Settings):
    from lookalike.serving.validation import validate_version

    return validate_version(settings, version=_version(args, settings),
                            env_manager=args.env_manager)


def _deploy(args, settings: Settings):
    from lookalike.serving.endpoint import deploy_champion

    _require_champion(args, settings)
    return deploy_champion(settings, dry_run=args.dry_run)


def _promote(args, settings: Settings):
    from lookalike.registry import promote

    return promote(settings, version=_version(args, settings))


def _recommend(args, settings: Settings):
    from lookalike.serving.neighbours import write_neighbours

    if not args.model_uri:
        _require_champion(args, settings)
    return write_neighbours(settings, model_uri=args.model_uri, k=args.k)


def _app_sample(args, settings: Settings):
    from lookalike.pipeline.sample import export_catalogue_sample

    return export_catalogue_sample(settings)


def _serve(args, settings: Settings):
    from lookalike.registry import require_champion
    from lookalike.serving.server import serve

    if not args.model_uri:
        require_champion(settings)  # before a server starts that can only fail
    return serve(settings, model_uri=args.model_uri, port=args.port)


def _pipeline(args, settings: Settings):
    from lookalike.pipeline.steps import run_pipeline

    return run_pipeline(settings, force=args.force, skip_tuning=args.skip_tuning)


def _demo(args, settings: Settings):
    from lookalike.pipeline.demo import run_demo
    from lookalike.registry import require_champion

    if args.no_pipeline:
        require_champion(settings)  # only the servers: they need a champion to serve
    return run_demo(settings, run_pipeline_first=not args.no_pipeline, app_port=args.app_port)


COMMANDS: dict[str, Callable] = {
    "ingest": _ingest, "tune": _tune, "train": _train, "evaluate": _evaluate, "embed": _embed,
    "build-index": _build_index, "package": _package, "validate": _validate,
    "promote": _promote, "deploy": _deploy,
    "recommend": _recommend, "serve": _serve, "pipeline": _pipeline, "demo": _demo,
    "app-sample": _app_sample,
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line (exposed so tests can check job parameters without running them)."""
    return _parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    # Before TensorFlow, Spark or nmslib load: their start-up chatter goes to the log file, and
    # Spark workers, tuning trials and Horovod ranks inherit the quiet environment and the
    # oneDNN switch.
    quiet_environment()
    prefer_onednn()
    args = parse(argv)
    if args.command == "ingest" and args.source == "folder" and not args.path:
        print("lookalike: ingest --source folder needs a PATH (a folder of images: "
              "PATH/<category>/<image>, or any layout with --metadata CSV)", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.profile, _overrides(args.set))
    except ConfigError as error:
        print(f"lookalike: {error}", file=sys.stderr)
        return 2
    # On a cluster, first the schema and Volume that everything below writes to.
    _prepare_workspace(settings)
    # `serve` runs the server in the foreground: its request log belongs on the terminal.
    log_file = None if args.command == "serve" else quiet_libraries(settings.logs_path)
    if log_file is not None and args.command in ("pipeline", "demo", "train", "tune"):
        say("lookalike", f"library logs: {log_file} (LOOKALIKE_VERBOSE=1 keeps them here)")
    try:
        result = COMMANDS[args.command](args, settings)
    except Skipped as skipped:
        say(args.command, f"skipped: {skipped}")
        result = {"skipped": str(skipped)}
    except UsageError as error:
        # Wrong order or a wrong name: what to do, in one line (the traceback is for bugs).
        say(args.command, f"error: {error}")
        return 1
    if result is not None:
        # One JSON line on stdout: what schedulers and scripts parse.
        print(json.dumps(result, default=str, sort_keys=False))
    if (args.command == "serve" and int(result.get("returncode") or 0) > 0
            and not result.get("stopped_by_signal")):
        return int(result["returncode"])  # the server failed on its own
    if args.command == "validate" and "passed" in result and not result["passed"]:
        # A failed gate fails the job task: promotion does not run and the failure is notified.
        say("validate", f"version {result['version']} failed validation: {result['checks']}")
        return 1
    return 0


def _prepare_workspace(settings: Settings) -> None:
    """TensorFlow 2.16 (DBR 15.4 LTS ML) loads Keras 2 (tf-keras), which TF Similarity needs;
    on Databricks the target's schema and Volume exist before any job step uses them."""
    from lookalike.runtime import on_databricks, prefer_keras_2

    prefer_keras_2()
    if on_databricks():
        from lookalike.catalogue.tables import prepare_unity_catalog

        prepare_unity_catalog(settings)


if __name__ == "__main__":
    sys.exit(main())
