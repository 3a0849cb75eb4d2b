"""The model registry: versions of ``registry.model_name``, aliases, promotion.

* :func:`register_version` -- register a logged pyfunc (see :mod:`lookalike.serving.package`)
  with tags and point alias ``challenger`` at it.
* :func:`promote` -- moves alias ``champion`` to the challenger (or a given version) when its
  ``registry.promotion_metric`` (read from the version's training run; higher is better) is not
  worse than the champion's minus ``registry.promotion_tolerance``. The first version becomes
  champion. The decision and reason are returned and recorded as version tag
  ``lookalike.promotion``. Two guards make promotion safe to run from several jobs:
  a version packaged while another champion was in place (tag ``lookalike.based_on_champion``,
  set by :mod:`lookalike.serving.package`) is refused once the champion has moved, and with
  ``registry.require_validation`` a version needs a passed :mod:`lookalike.serving.validation`.
* :func:`champion_training_run` -- the training run behind the champion, so jobs that only
  refresh the catalogue (embed, build-index, package) keep the champion's network.

The registered name is configuration only: on Databricks Unity Catalog use a three-level name
(``catalog.schema.lookalike``) in ``registry.model_name``.
"""

from __future__ import annotations

import logging
import math

from lookalike.config import Settings
from lookalike.errors import UsageError

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
PROMOTION_TAG = "lookalike.promotion"
BASED_ON_TAG = "lookalike.based_on_champion"
VALIDATION_TAG = "lookalike.validation"
NO_CHAMPION = "none"


def register_version(settings: Settings, model_uri: str, tags: dict[str, str]):
    """Register ``model_uri`` as a new version of ``registry.model_name`` with ``tags``
    (``training_run`` is what promotion reads) and point alias ``challenger`` at it."""
    import contextlib

    import mlflow

    from lookalike.console import library_output

    name = settings.registry.model_name
    # MLflow print()s "Successfully registered model ..." to stderr: to the log, not the terminal.
    with library_output() as stream, contextlib.redirect_stderr(stream):
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


def model_version(settings: Settings, version: str | int | None, default_alias: str):
    """ModelVersion ``version`` of ``registry.model_name``, or the one behind ``default_alias``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    name = settings.registry.model_name
    if version is None:
        found = _alias(client, name, default_alias)
        if found is None:
            raise UsageError(f"registered model {name!r} has no '{default_alias}' alias: "
                             "run `lookalike package` first")
        return found
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise UsageError(f"registered model {name!r} has no version {version}") from error


def version_of_job_run(settings: Settings, job_run: str, newest: int = 50):
    """The model version that Databricks job run ``job_run`` packaged (version tag
    ``lookalike.job_run``), or None. Tags are read per version: Unity Catalog's search returns
    versions without them."""
    import mlflow

    from lookalike.tracking import JOB_RUN_TAG, configure_mlflow

    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    name = settings.registry.model_name
    found = client.search_model_versions(f"name='{name}'")
    for number in sorted((int(v.version) for v in found), reverse=True)[:newest]:
        version = client.get_model_version(name, str(number))
        if version.tags.get(JOB_RUN_TAG) == str(job_run):
            return version
    return None


def champion(settings: Settings):
    """The champion's ModelVersion, or None before the first promotion."""
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    return _alias(mlflow.MlflowClient(), settings.registry.model_name, CHAMPION)


def require_champion(settings: Settings):
    """The champion's ModelVersion; before the first promotion, a :class:`UsageError` that
    says how to make one."""
    current = champion(settings)
    if current is None:
        raise UsageError(f"registered model {settings.registry.model_name!r} has no "
                         f"'{CHAMPION}' yet: train, package and promote a first version (the "
                         "weekly retrain job, or `lookalike pipeline`)")
    return current


def champion_training_run(settings: Settings) -> str:
    """The training run of the champion (its ``training_run`` tag)."""
    current = require_champion(settings)
    run_id = current.tags.get("training_run")
    if not run_id:
        raise ValueError(f"champion v{current.version} has no 'training_run' tag")
    return run_id


def resolve_run_id(settings: Settings, run_id: str | None) -> str | None:
    """``run_id`` as given, except ``champion``: the champion's training run."""
    return champion_training_run(settings) if run_id == CHAMPION else run_id


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


def decide_promotion(value: float | None, best: float | None, version, champion_version,
                     metric: str, tolerance: float) -> tuple[bool, str]:
    """(promote?, why) for a challenger's ``value`` against the champion's ``best``.

    A challenger without a finite metric is never promoted, even as the first version: a
    model no one measured must not serve. A champion without a finite metric is replaced by
    any measured challenger (a NaN champion could otherwise never be beaten).
    """
    if value is None or not math.isfinite(value):
        return False, (f"version {version} has no finite {metric} ({value}): not promoted")
    if champion_version is None:
        return True, (f"no champion yet: first version {version} ({metric} {value:.4f}) "
                      "becomes champion")
    if str(champion_version) == str(version):
        return False, f"version {version} already is champion"
    if best is None or not math.isfinite(best):
        return True, (f"champion v{champion_version} has no finite {metric} ({best}); "
                      f"challenger has {value:.4f}")
    if value >= best - tolerance:
        return True, (f"{metric} {value:.4f} >= champion v{champion_version}'s {best:.4f} "
                      f"- tolerance {tolerance}")
    return False, (f"{metric} {value:.4f} < champion v{champion_version}'s {best:.4f} "
                   f"- tolerance {tolerance}: champion kept")


def guard_reason(tags: dict, champion_version, require_validation: bool) -> str | None:
    """Why a version that the metric would promote must not be, or None.

    * The champion moved since the version was packaged (another job promoted meanwhile):
      promoting it could put back an older network.
    * Validation is required and the version has not passed it.
    """
    based_on = tags.get(BASED_ON_TAG)
    current = NO_CHAMPION if champion_version is None else str(champion_version)
    if based_on is not None and based_on != current:
        return (f"the champion moved (v{based_on} when packaged, now v{current}) while this "
                "version was built: not promoted; rerun the job to package against the new "
                "champion")
    validation = tags.get(VALIDATION_TAG)
    if require_validation and not (validation or "").startswith("passed"):
        return (f"not validated ({validation or 'never run'}): run `lookalike validate` "
                "before promoting")
    return None


def promote(settings: Settings, version: str | int | None = None) -> dict:
    """Make ``version`` (default: the challenger) champion if it is not worse; say why."""
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    name = settings.registry.model_name
    metric = settings.registry.promotion_metric
    tolerance = settings.registry.promotion_tolerance
    candidate = model_version(settings, version, default_alias=CHALLENGER)
    current = _alias(client, name, CHAMPION)
    value = version_metric(client, candidate, metric)
    result = {"model_name": name, "version": int(candidate.version), "metric": metric,
              "challenger_value": value, "champion_version": None, "champion_value": None,
              "tolerance": tolerance}
    if current is not None:
        result["champion_version"] = int(current.version)
        result["champion_value"] = version_metric(client, current, metric)
    promoted, reason = decide_promotion(value, result["champion_value"], candidate.version,
                                        None if current is None else current.version,
                                        metric, tolerance)
    if value is None or not math.isfinite(value):
        reason += f"; its training run logged {_available_metrics(client, candidate)}"
    blocked = guard_reason(candidate.tags, None if current is None else current.version,
                           settings.registry.require_validation)
    if promoted and blocked:
        promoted, reason = False, blocked
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        result["champion_version"] = int(candidate.version)
    client.set_model_version_tag(name, candidate.version, PROMOTION_TAG, reason)
    result.update(promoted=promoted, reason=reason)
    log.info("promote: %s", result)
    return result
