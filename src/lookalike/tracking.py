"""MLflow wiring shared by every job: where runs and models are stored, and finding past runs.

Locally tracking and registry are one sqlite file under LOOKALIKE_HOME (MLflow 3 refuses a
plain file store) with artifacts beside it. On a Databricks cluster the workspace's tracking
server and Unity Catalog's registry are used (``Settings.tracking_uri``), the experiment is a
workspace path whose folder is created first, and Spark workers (tuning trials, Horovod ranks)
get what they need to reach the server from :func:`tracking_environment`.
Runs are tagged with ``lookalike.kind`` (tune, train, package) so jobs can find the latest one,
and with ``lookalike.job_run`` when a Databricks job made them, so a later task of the same
job run finds exactly the run an earlier task made (:func:`job_run_training`).
"""

from __future__ import annotations

import os
import posixpath

from lookalike.config import Settings
from lookalike.errors import UsageError
from lookalike.runtime import on_databricks

KIND_TAG = "lookalike.kind"
JOB_RUN_TAG = "lookalike.job_run"
# Artifact folder of a training run holding the embedding SavedModel and its lookalike.json.
MODEL_ARTIFACT = "embedding_model"
# Experiments whose workspace folder this process has made sure of.
_FOLDERS_MADE: set[str] = set()


def tracking_environment(settings: Settings) -> dict[str, str]:
    """Environment a process on another node needs to log to this tracking server and
    registry. For ``databricks`` URIs: the workspace host and a token of this driver, as
    Databricks documents for Horovod and Hyperopt workers."""
    env = {"MLFLOW_TRACKING_URI": settings.tracking_uri,
           "MLFLOW_REGISTRY_URI": settings.registry_uri}
    if settings.tracking_uri.startswith("databricks"):
        from mlflow.utils.databricks_utils import get_databricks_host_creds

        creds = get_databricks_host_creds(settings.tracking_uri)
        env["DATABRICKS_HOST"] = creds.host
        if creds.token:
            env["DATABRICKS_TOKEN"] = creds.token
    return env


def job_tags(job_run: str | None) -> dict[str, str]:
    """Tags of what a Databricks job task makes: its job run (``{{job.run_id}}``)."""
    return {JOB_RUN_TAG: str(job_run)} if job_run else {}


def configure_mlflow(settings: Settings) -> str:
    """Point MLflow at the configured stores and return the experiment id (created if needed)."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    # Child processes (Spark workers, Horovod ranks, `mlflow models serve`) inherit these.
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    os.environ["MLFLOW_REGISTRY_URI"] = settings.registry_uri
    if on_databricks():
        from lookalike import workspace

        # A workspace path as configured (e.g. /Users/<you>/lookalike-dev), its folder made
        # first: Databricks refuses an experiment whose parent folder does not exist.
        path = workspace.check_workspace_path(settings.mlflow.experiment)
        if path not in _FOLDERS_MADE:   # once per process: jobs call this from every step
            workspace.ensure_folder(posixpath.dirname(path))
            _FOLDERS_MADE.add(path)
        return mlflow.set_experiment(path).experiment_id
    settings.home_path.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is None:
        artifacts = settings.artifacts_path
        artifacts.mkdir(parents=True, exist_ok=True)
        experiment_id = client.create_experiment(settings.mlflow.experiment,
                                                 artifact_location=artifacts.as_uri())
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def latest_run(settings: Settings, kind: str, extra_filter: str = ""):
    """The most recent FINISHED top-level run tagged ``lookalike.kind = kind``, or None."""
    import mlflow

    experiment_id = configure_mlflow(settings)
    query = f"tags.`{KIND_TAG}` = '{kind}' and attributes.status = 'FINISHED'"
    if extra_filter:
        query += f" and {extra_filter}"
    runs = mlflow.search_runs([experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=20,
                              output_format="list")
    top_level = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return top_level[0] if top_level else None


def require_run(settings: Settings, kind: str, run_id: str | None):
    """The run ``run_id`` (checked to be of ``kind``), or the latest of that kind; a clear
    error if none."""
    import mlflow

    if run_id:
        configure_mlflow(settings)
        try:
            run = mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # not "no such run" (the store unreachable, no permission): as it is
            raise UsageError(f"no MLflow run with id {run_id!r}") from error
        if run.data.tags.get(KIND_TAG) != kind:
            raise UsageError(f"run {run_id} is a {run.data.tags.get(KIND_TAG)!r} run, "
                             f"not a {kind!r} run")
        return run
    run = latest_run(settings, kind)
    if run is None:
        raise UsageError(f"no finished {kind!r} run yet: run `lookalike {kind}` first")
    return run


def job_run_training(settings: Settings, job_run: str) -> str:
    """The training run that Databricks job run ``job_run`` made (its ``train`` task)."""
    run = latest_run(settings, "train", f"tags.`{JOB_RUN_TAG}` = '{job_run}'")
    if run is None:
        raise UsageError(f"job run {job_run} has no finished training run: did its train "
                         "task succeed?")
    return run.info.run_id
