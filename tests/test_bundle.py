"""The Databricks bundle (databricks.yml + conf/bundle/*.yml) is consistent with the code.

No Databricks CLI here: the YAML is parsed and checked for what would otherwise fail only
on a workspace: task files that do not exist, parameters the CLI would reject, bad cron
expressions, targets that share tables or a model, a pinned model version, clusters without
Unity Catalog access, jobs without timeouts or alerts.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from bundle_model import Bundle, load_documents

from lookalike import cli
from lookalike.config import load_settings

ROOT = Path(__file__).resolve().parents[1]

BUNDLE = load_documents()
ROOT_DOC = BUNDLE[0][1]
TARGETS = sorted(ROOT_DOC["targets"])


def _resources(kind: str):
    """[(defining file, key, definition)] of one resource kind over all bundle files."""
    return Bundle(TARGETS[0]).resources(kind)


def _variables(target: str) -> dict:
    return Bundle(target).variables


def _resolve(text, variables: dict, target: str):
    """Every ${...} reference resolved as the CLI does for ``target`` (tests/bundle_model)."""
    return Bundle(target).resolve(text)


def _wrapper_command(python_file: Path) -> str:
    """The sub-command a jobs/X.py wrapper passes to lookalike.cli.main (read from its code)."""
    tree = ast.parse(python_file.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main"
                and node.args and isinstance(node.args[0], ast.List)):
            first = node.args[0].elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                return first.value
    raise AssertionError(f"{python_file} does not call main([<command>, ...])")


def _tasks():
    for path, key, job in _resources("jobs"):
        for task in job.get("tasks", []):
            yield path, key, job, task


def test_bundle_has_dev_and_prod_targets_and_a_wheel():
    assert {"dev", "prod"} <= set(TARGETS)
    assert ROOT_DOC["targets"]["dev"].get("default") is True
    assert ROOT_DOC["targets"]["dev"]["mode"] == "development"
    assert ROOT_DOC["targets"]["prod"]["mode"] == "production"
    wheels = [a for a in ROOT_DOC["artifacts"].values() if a.get("type") == "whl"]
    assert wheels, "no python wheel artifact"
    assert (ROOT / wheels[0]["path"] / "pyproject.toml").exists()


def test_expected_jobs_exist():
    jobs = {key: job for _, key, job in _resources("jobs")}
    assert len(jobs) >= 2
    commands: dict[str, set] = {}
    for path, key, _, task in _tasks():
        python_file = (path.parent / task["spark_python_task"]["python_file"]).resolve()
        commands.setdefault(key, set()).add(_wrapper_command(python_file))
    daily = [k for k, c in commands.items() if {"ingest", "embed", "build-index"} <= c]
    weekly = [k for k, c in commands.items()
              if {"tune", "train", "evaluate", "package", "promote"} <= c]
    assert daily and weekly, commands
    train_task = next(t for p, k, _, t in _tasks() if k == weekly[0]
                      and t["spark_python_task"]["python_file"].endswith("train.py"))
    assert "{{job.parameters.processes}}" in train_task["spark_python_task"]["parameters"]
    cluster = next(c["new_cluster"] for c in jobs[weekly[0]]["job_clusters"]
                   if c["job_cluster_key"] == train_task["job_cluster_key"])
    for target in TARGETS:
        variables = _variables(target)
        assert "gpu-ml" in _resolve(cluster["spark_version"], variables, target)
        assert _resolve(cluster["spark_version"], variables, target).startswith("15.4")
        assert int(_resolve(str(cluster["num_workers"]), variables, target)) >= 1


@pytest.mark.parametrize("target", TARGETS)
def test_every_task_runs_an_existing_entry_point_with_accepted_parameters(target):
    checked = 0
    for path, job_key, job, task in _tasks():
        where = f"{path.name}: {job_key}.{task['task_key']}"
        spt = task.get("spark_python_task")
        assert spt, f"{where}: expected a spark_python_task"
        python_file = (path.parent / spt["python_file"]).resolve()
        assert python_file.exists(), f"{where}: {spt['python_file']} does not exist"
        assert python_file.parent == ROOT / "jobs", f"{where}: entry points live in jobs/"
        command = _wrapper_command(python_file)

        upstream = {d["task_key"] for d in task.get("depends_on", [])}
        all_tasks = {t["task_key"]: t for t in job["tasks"]}
        arguments = Bundle(target).task_arguments(job_key, task, "123456789")
        assert upstream <= set(all_tasks), f"{where}: depends on unknown tasks"
        try:
            args = cli.parse([command, *arguments])
        except SystemExit as error:
            raise AssertionError(f"{where}: `lookalike {command} {' '.join(arguments)}` is "
                                 "rejected by the CLI") from error
        assert args.command == command
        if args.profile:
            assert (ROOT / "conf" / f"{args.profile}.yaml").exists(), f"{where}: no profile"
        for library in task.get("libraries", []):
            if "whl" in library:
                assert library["whl"].endswith(".whl")
        checked += 1
    assert checked >= 8


QUARTZ_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (1, 7), (1970, 2099)]
MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
DAYS = "SUN MON TUE WED THU FRI SAT".split()


def _quartz_value(text: str, position: int) -> int:
    names = MONTHS if position == 4 else DAYS if position == 5 else []
    if text.upper() in names:
        return names.index(text.upper()) + 1
    assert text.isdigit(), f"{text!r} is not a number"
    low, high = QUARTZ_RANGES[position]
    assert low <= int(text) <= high, f"{text} outside {low}-{high}"
    return int(text)


def quartz_valid(expression: str) -> bool:
    """Quartz cron: sec min hour day-of-month month day-of-week [year], one of the day fields '?'."""
    fields = expression.split()
    if len(fields) not in (6, 7):
        return False
    if (fields[3] == "?") == (fields[5] == "?"):
        return False
    try:
        for position, value in enumerate(fields):
            if value in ("*", "?") and (value == "*" or position in (3, 5)):
                continue
            for part in value.split(","):
                base, _, step = part.partition("/")
                if step:
                    assert step.isdigit() and int(step) > 0
                if base == "*":
                    continue
                if position == 3 and base in ("L", "LW"):
                    continue
                if position == 3 and base.endswith("W"):
                    base = base[:-1]
                if position == 5 and "#" in base:
                    day, nth = base.split("#")
                    _quartz_value(day, position)
                    assert nth.isdigit() and 1 <= int(nth) <= 5
                    continue
                if position == 5 and base.endswith("L") and len(base) > 1:
                    base = base[:-1]
                low, _, high = base.partition("-")
                _quartz_value(low, position)
                if high:
                    _quartz_value(high, position)
    except AssertionError:
        return False
    return True


def test_quartz_validator_itself():
    for good in ("0 0 2 * * ?", "0 0 4 ? * SUN", "0 15 10 ? * MON-FRI", "0 0/5 * * * ?",
                 "0 0 12 L * ?", "0 0 12 ? * 6#3 2030"):
        assert quartz_valid(good), good
    for bad in ("0 2 * * *", "0 0 2 * * *", "0 0 25 * * ?", "0 61 1 ? * MON",
                "0 0 2 ? * FUNDAY", "0 0 2 ? * ?"):
        assert not quartz_valid(bad), bad


def test_schedules_are_valid_quartz_cron():
    schedules = [(key, job["schedule"]) for _, key, job in _resources("jobs")
                 if "schedule" in job]
    assert len(schedules) >= 2
    for key, schedule in schedules:
        assert quartz_valid(schedule["quartz_cron_expression"]), key
        assert schedule.get("timezone_id")


def _job_env(target: str) -> dict[str, dict]:
    """Each job's cluster environment, resolved for ``target``; all clusters of a job agree."""
    variables = _variables(target)
    found = {}
    for _, key, job in _resources("jobs"):
        envs = [{k: _resolve(v, variables, target)
                 for k, v in c["new_cluster"].get("spark_env_vars", {}).items()}
                for c in job["job_clusters"]]
        assert all(env == envs[0] for env in envs), key
        found[key] = envs[0]
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_jobs_use_unity_catalog_names_from_one_environment(target, monkeypatch):
    """Tables are managed tables catalog.schema.name, the model a three-level name in the same
    schema, LOOKALIKE_HOME a Volume of that schema: read through the real settings loader."""
    from lookalike.catalogue.tables import catalogue_table
    from lookalike.runtime import volume_of

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    for key, env in _job_env(target).items():
        settings = load_settings(environ=env)
        catalog, schema = settings.catalogue.catalog, settings.catalogue.database
        assert catalogue_table(settings, "products").name == f"`{catalog}`.`{schema}`.`products`"
        assert catalogue_table(settings, "embeddings").path is None
        # Development mode prefixes the model's name too (dev_<you>_lookalike).
        assert settings.registry.model_name.startswith(f"{catalog}.{schema}."), key
        assert settings.registry.model_name.endswith(load_settings().registry.model_name), key
        assert volume_of(env["LOOKALIKE_HOME"])[:2] == (catalog, schema), key
        assert settings.mlflow.experiment.startswith("/"), "experiments are workspace paths"


def test_dev_and_prod_share_nothing_a_run_writes():
    dev, prod = (next(iter(_job_env(t).values())) for t in ("dev", "prod"))
    for name in ("LOOKALIKE__CATALOGUE__DATABASE", "LOOKALIKE__REGISTRY__MODEL_NAME",
                 "LOOKALIKE__MLFLOW__EXPERIMENT", "LOOKALIKE_HOME",
                 "LOOKALIKE__DEPLOY__ENDPOINT_NAME"):
        assert dev[name] != prod[name], f"dev and prod share {name}: {dev[name]}"


def test_prod_runs_as_a_service_principal_with_permissions():
    prod = ROOT_DOC["targets"]["prod"]
    assert "service_principal_name" in prod["run_as"]
    levels = {p["level"] for p in prod["permissions"]}
    assert "CAN_MANAGE" in levels and "CAN_VIEW" in levels
    assert "run_as" not in ROOT_DOC["targets"]["dev"]       # dev runs as the developer


def test_clusters_jobs_and_notifications_are_production_grade():
    for _, key, job in _resources("jobs"):
        for cluster in job["job_clusters"]:
            assert cluster["new_cluster"]["data_security_mode"] == "SINGLE_USER", key
        assert job["timeout_seconds"] > 0, key
        assert job["email_notifications"]["on_failure"], key
        assert job["max_concurrent_runs"] == 1 and job["queue"]["enabled"] is True, key


def test_no_model_version_is_pinned_and_the_endpoint_follows_the_champion():
    """No bundle variable or resource names a version: the deploy task moves the endpoint to
    whatever promote left as champion, after validate and promote, in both jobs."""
    assert not [v for v in ROOT_DOC["variables"] if "version" in v and "spark" not in v]
    assert not _resources("model_serving_endpoints")
    for _, key, job in _resources("jobs"):
        tasks = {t["task_key"]: t for t in job["tasks"]}
        command = {k: _wrapper_command((ROOT / "jobs" / Path(
            t["spark_python_task"]["python_file"]).name)) for k, t in tasks.items()}
        by_command = {c: k for k, c in command.items()}
        assert {"package", "validate", "promote", "deploy"} <= set(by_command), key

        def needs(task, other):
            return other in {d["task_key"] for d in tasks[task].get("depends_on", [])}

        assert needs(by_command["validate"], by_command["package"])
        assert needs(by_command["promote"], by_command["validate"])
        assert needs(by_command["deploy"], by_command["promote"])


def test_only_the_weekly_retrain_trains_and_the_daily_job_keeps_the_champions_network():
    for _, key, job in _resources("jobs"):
        commands = {_wrapper_command(ROOT / "jobs" / Path(t["spark_python_task"][
            "python_file"]).name): t["spark_python_task"].get("parameters", [])
            for t in job["tasks"]}
        for command in ("embed", "build-index", "package"):
            parameters = commands[command]
            # Every task knows its job run; the weekly job's later tasks find the training
            # run of the same job run through it, the daily job names the champion's.
            assert parameters[parameters.index("--job-run") + 1] == "{{job.run_id}}"
            if "train" in commands:
                assert "--run-id" not in parameters, (key, command)
            else:
                assert parameters[parameters.index("--run-id") + 1] == "champion", (key, command)


def test_the_wheel_leaves_the_runtimes_own_packages_alone():
    """Installed as a job library on DBR 15.4 LTS ML, the wheel must not replace the cluster's
    Spark, Delta, TensorFlow (Horovod is built against it), Horovod, Hyperopt or Petastorm, and
    pins nothing exactly: exact pins live in .ci/requirements.lock and the `local` extra."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~;\\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    provided = {"pyspark", "delta-spark", "tensorflow", "horovod", "hyperopt", "petastorm"}
    assert not names & provided, names & provided
    assert not [d for d in project["dependencies"] if "==" in d]
    local = {re.split(r"[<>=!~;\\[ ]", d, maxsplit=1)[0].lower()
             for d in project["optional-dependencies"]["local"]}
    assert {"pyspark", "delta-spark", "tensorflow"} <= local


@pytest.mark.parametrize("target", TARGETS)
def test_horovod_processes_fit_the_gpu_workers(target):
    """Issue 18, item 5: one Spark task per GPU worker, so the default number of Horovod
    processes is the number of GPU workers (dev: 1), never more."""
    bundle = Bundle(target)
    for key, job in bundle.jobs().items():
        params = {p["name"]: bundle.resolve(p["default"]) for p in job.get("parameters", [])}
        if "processes" in params:
            cluster = bundle.cluster(key, "gpu")
            assert int(params["processes"]) <= int(cluster["num_workers"]), (target, params)


def test_prod_uses_the_photos_recipe_and_dev_the_demo():
    """Issue 18, item 6: prod trains a shop's photos with the photos profile, whose tuning
    (off by default: its values are cross-validated) needs no Fashion-MNIST category when on;
    dev keeps the Fashion-MNIST demo."""
    from lookalike.learning.tuning import tuning_plan

    prod, dev = Bundle("prod").variables, Bundle("dev").variables
    assert (prod["profile"], prod["ingest_source"]) == ("photos", "folder")
    assert (dev["profile"], dev["ingest_source"]) == ("quick", "fashion-mnist")
    photos = load_settings("photos")
    assert photos.image.channels == 3 and photos.tuning.enabled is False
    tuning_plan(photos, ["dress", "shirt", "shoes", "skirt"])   # any shop's categories


def test_fashion_mnist_downloads_over_https_from_a_file_host():
    """Issue 18, item 7: an S3 *website* endpoint answers HTTP only; clusters have no Debian
    package, so the default URL must serve the four files over HTTPS."""
    url = load_settings().catalogue.fashion_mnist_url
    assert url.startswith("https://") and "s3-website" not in url


def test_no_task_reads_task_values():
    """Issue 18, item 8: dbutils.jobs.taskValues.set works only in notebooks; these tasks are
    scripts, so hand-offs go through MLflow tags of the job run ({{job.run_id}})."""
    for path, _, job in _resources("jobs"):
        for task in job["tasks"]:
            assert "spark_python_task" in task
            text = " ".join(map(str, task["spark_python_task"].get("parameters", [])))
            assert "{{tasks." not in text, (path.name, task["task_key"])
            assert "{{job.run_id}}" in text, (path.name, task["task_key"])


def test_catalog_is_a_required_variable_and_unity_catalog_objects_are_declared():
    """The catalog `main` may not exist: the user names theirs. The bundle declares the
    schema, both Volumes and the registered model, with grants."""
    assert "default" not in ROOT_DOC["variables"]["catalog"]
    bundle = Bundle("prod")
    assert {k for _, k, _ in bundle.resources("volumes")} == {"home", "images"}
    model = bundle.resource("registered_models", "lookalike")
    assert any("EXECUTE" in g["privileges"] for g in model["grants"])
    root = ROOT_DOC["targets"]["prod"]["workspace"]["root_path"]
    assert not root.startswith("/Workspace/Shared"), "every user could edit prod's code"
    for target in TARGETS:
        assert ROOT_DOC["targets"][target]["workspace"].get("host")


@pytest.mark.parametrize("target", TARGETS)
def test_the_demo_app_reads_what_the_jobs_export_and_queries_the_endpoint(target):
    """conf/bundle/app.yml: the app browses the sample the app_sample task writes into the
    home Volume (which it may read), queries the target's endpoint by name, and its service
    principal is among those the deploy task grants CAN_QUERY."""
    from lookalike.app_env import SAMPLE_ENV, SAMPLE_RELATIVE_PATH, SERVING_ENDPOINT_ENV

    bundle = Bundle(target)
    app = bundle.resolve(bundle.resource("apps", "lookalike_app"))
    env = {e["name"]: e["value"] for e in app["config"]["env"]}
    home = next(iter(_job_env(target).values()))["LOOKALIKE_HOME"]
    assert env[SAMPLE_ENV] == f"{home}/{SAMPLE_RELATIVE_PATH.as_posix()}"
    assert env[SERVING_ENDPOINT_ENV] == bundle.resolve(bundle.variables["endpoint_name"])
    volume = app["resources"][0]["uc_securable"]
    assert volume["permission"] == "READ_VOLUME"
    assert volume["securable_full_name"] == ".".join(home.split("/")[2:5])
    principals = json.loads(next(iter(_job_env(target).values()))[
        "LOOKALIKE__DEPLOY__QUERY_PRINCIPALS"])
    assert bundle.resolve("${resources.apps.lookalike_app.service_principal_client_id}") \
        in principals
    source = (ROOT / "conf" / "bundle" / app["source_code_path"]).resolve()
    assert source == ROOT and (source / app["config"]["command"][2]).is_file()
    commands = {_wrapper_command(ROOT / "jobs" / Path(t["spark_python_task"]["python_file"]).name)
                for job in bundle.jobs().values() for t in job["tasks"]}
    assert "app-sample" in commands
