"""The workspace rehearsal (tests/rehearsal/rehearse.py): from an empty Unity Catalog
workspace to a served champion, every task of both jobs as a cluster runs it, for dev and prod.

dev: the nightly refresh first (before any champion: it ingests, exports the app's sample and
skips the rest, successfully), then the weekly retrain (ingest, tune, train, evaluate, embed,
index, package, validate, promote, deploy), then one query of the endpoint it configured.
prod: the weekly retrain on a shop's photos uploaded to the images Volume (photos recipe, its
values cross-validated, so its tune task skips; Horovod with one rank per GPU worker), then the
nightly refresh on that champion.
Sizes are shrunk by LOOKALIKE__* overrides (SCALE); everything else is the bundle's.
"""

from __future__ import annotations

import sys

import pytest
from bundle_model import APP_SERVICE_PRINCIPAL
from rehearse import NOT_COVERED, Workspace, fashion_mnist_slice, file_server, shop_photos

from lookalike.learning.tuning import TUNING_OFF

# About 4 (dev) and 6 (prod) minutes alone on 2 quiet cores (BENCHMARKS.md): room for a
# slower machine or a busy one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

DAILY, WEEKLY = "lookalike_daily_catalogue", "lookalike_weekly_retrain"
# Small data, few steps: what a rehearsal needs to run every task, not to learn well.
SCALE = {
    "LOOKALIKE__TRAINING__EPOCHS": "1",
    "LOOKALIKE__TRAINING__STEPS_PER_EPOCH": "4",
    "LOOKALIKE__TUNING__EPOCHS": "1",
    "LOOKALIKE__TUNING__MAX_VALIDATION_QUERIES": "100",
    "LOOKALIKE__EVALUATION__MAX_QUERIES": "200",
    "LOOKALIKE__EVALUATION__PLOT_QUERIES": "2",
    "LOOKALIKE__VALIDATION__SAMPLE_SIZE": "5",
    "LOOKALIKE__VALIDATION__LATENCY_QUERIES": "3",
    "LOOKALIKE__CATALOGUE__INGEST_PARTITIONS": "2",
    "LOOKALIKE__EMBEDDING__PARTITIONS": "2",
}
PHOTOS_SCALE = {
    "LOOKALIKE__IMAGE__SIZE": "64",
    "LOOKALIKE__TRAINING__EPOCHS": "2",
    "LOOKALIKE__TRAINING__WARMUP_EPOCHS": "1",
    "LOOKALIKE__TRAINING__STEPS_PER_EPOCH": "2",
    "LOOKALIKE__TRAINING__CLASSES_PER_BATCH": "4",
    "LOOKALIKE__TRAINING__EXAMPLES_PER_CLASS": "4",
}
TUNE = {"max_evals": "2", "tune_parallelism": "2"}


def _report(ws: Workspace) -> None:
    total = sum(s for _, s in ws.timings)
    lines = [f"  {name}: {seconds:.0f}s" for name, seconds in ws.timings]
    print(f"\n[rehearsal {ws.target}] {len(ws.timings)} tasks in {total:.0f}s\n"
          + "\n".join(lines) + "\n[rehearsal] not covered:\n"
          + "\n".join(f"  - {item}" for item in NOT_COVERED), file=sys.stderr)


def _check_endpoint(ws: Workspace, name: str) -> None:
    state = ws.state()
    assert name in state["endpoints"], state["endpoints"]
    # The group and the demo app's service principal may query it (CAN_QUERY).
    granted = state["permissions"][f"/api/2.0/permissions/serving-endpoints/id-{name}"]
    assert {"service_principal_name": APP_SERVICE_PRINCIPAL,
            "permission_level": "CAN_QUERY"} in granted, granted
    status, body = ws.query_endpoint(name)
    assert status == 200, body
    records = body["predictions"] if isinstance(body, dict) else body
    assert len(records) == 3 and all("product_id" in r for r in records), body


def _check_workspace(ws: Workspace) -> None:
    """The experiment lives at its configured workspace path, whose folder was made first."""
    import mlflow

    experiment = ws.bundle.resolve(ws.bundle.variables["experiment"])
    client = mlflow.MlflowClient(tracking_uri=ws.tracking_uri)
    assert client.get_experiment_by_name(experiment) is not None, experiment
    assert experiment.rsplit("/", 1)[0] in ws.state()["folders"]
    # Every training run of the weekly job knows its job run (the hand-off between tasks).
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              "tags.`lookalike.kind` = 'train'")
    assert runs and all(r.data.tags.get("lookalike.job_run") for r in runs)


@pytest.fixture()
def workspace_factory(tmp_path):
    made = []

    def make(target: str, scale: dict) -> Workspace:
        ws = Workspace(target, tmp_path / target, {**SCALE, **scale})
        made.append(ws)
        ws.start()
        return ws

    yield make
    for ws in made:
        _report(ws)
        ws.stop()


def test_dev_from_an_empty_workspace_to_a_served_champion(workspace_factory, tmp_path):
    mirror = fashion_mnist_slice(tmp_path / "mirror", train=1500, test=300)
    with file_server(mirror) as url:
        # No Debian package on a cluster: the ingest task downloads the files (from a
        # loopback mirror here, with the same file layout as the configured HTTPS one).
        ws = workspace_factory("dev", {"LOOKALIKE__CATALOGUE__FASHION_MNIST_URL": url,
                                       "LOOKALIKE__CATALOGUE__FASHION_MNIST_DIR":
                                           str(tmp_path / "no-debian-package")})
        assert ws.deploy()
        nightly = ws.run_job(DAILY, "1001")
        assert nightly["ingest"]["inserted"] == 1800, nightly["ingest"]
        assert nightly["app_sample"]["rows"] > 0
        for task in ("embed", "build_index", "package", "validate", "promote", "deploy",
                     "recommend"):
            assert "no champion yet" in nightly[task].get("skipped", "") or \
                "packaged no model version" in nightly[task].get("skipped", ""), (task, nightly)
        weekly = ws.run_job(WEEKLY, "1002", TUNE)
    assert weekly["promote"]["promoted"] is True, weekly["promote"]
    assert weekly["validate"]["passed"] is True
    assert weekly["package"]["version"] == weekly["promote"]["version"]
    assert weekly["deploy"]["action"] == "create"
    _check_workspace(ws)
    _check_endpoint(ws, ws.bundle.resolve(ws.bundle.variables["endpoint_name"]))


def test_prod_trains_a_shops_photos_and_refreshes_nightly(workspace_factory):
    ws = workspace_factory("prod", PHOTOS_SCALE)
    assert ws.deploy()
    images = ws.volume_path(
        f"/Volumes/spark_catalog/{ws.bundle.resource_name('schemas', 'lookalike')}/images")
    assert images.is_dir(), "bundle deploy creates the images Volume"
    uploaded = shop_photos(images)
    weekly = ws.run_job(WEEKLY, "2001")
    assert weekly["ingest"]["inserted"] == uploaded, weekly["ingest"]
    assert weekly["tune"] == {"skipped": TUNING_OFF}, weekly["tune"]
    assert weekly["train"]["processes"] == 2, "one Horovod rank per GPU worker"
    assert weekly["promote"]["promoted"] is True, weekly["promote"]
    nightly = ws.run_job(DAILY, "2002")
    assert nightly["package"]["version"] == weekly["package"]["version"] + 1
    assert nightly["validate"]["passed"] is True
    assert nightly["recommend"], nightly
    assert nightly["deploy"]["action"] in ("update", "unchanged"), nightly["deploy"]
    _check_workspace(ws)
    _check_endpoint(ws, ws.bundle.resolve(ws.bundle.variables["endpoint_name"]))
