"""`lookalike deploy`: the serving endpoint request, checked without a workspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from lookalike.config import load_settings
from lookalike.serving.endpoint import endpoint_requests, serves_version


def test_requests_serve_the_version_with_all_traffic():
    settings = load_settings(overrides={"registry": {"model_name": "main.shop.lookalike"},
                                        "deploy": {"endpoint_name": "shop-lookalike"}})
    requests = endpoint_requests(settings, 7)
    create, update = requests["create"], requests["update"]
    assert (create["method"], create["path"]) == ("POST", "/api/2.0/serving-endpoints")
    assert (update["method"], update["path"]) == (
        "PUT", "/api/2.0/serving-endpoints/shop-lookalike/config")
    assert create["body"]["name"] == "shop-lookalike" and create["body"]["config"] == update["body"]
    entity = update["body"]["served_entities"][0]
    assert (entity["entity_name"], entity["entity_version"]) == ("main.shop.lookalike", "7")
    assert entity["name"] == "lookalike-7" and "." not in entity["name"]
    assert update["body"]["traffic_config"]["routes"] == [
        {"served_model_name": "lookalike-7", "traffic_percentage": 100}]


def test_an_endpoint_already_on_the_version_is_left_alone():
    endpoint = {"config": {"served_entities": [{"entity_name": "m", "entity_version": "3"}]}}
    assert serves_version(endpoint, "m", 3)
    assert not serves_version(endpoint, "m", 4) and not serves_version(endpoint, "other", 3)
    assert not serves_version({"state": {"ready": "NOT_READY"}}, "m", 3)


def test_dry_run_prints_the_request_for_the_registered_champion(packaged_model, tmp_path):
    """The real command against the real registry: the champion's version goes in the body."""
    settings = packaged_model.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(HOME=str(tmp_path), LOOKALIKE_HOME=str(settings.home_path))   # no ~/.databrickscfg
    done = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "deploy", "--dry-run",
         "--set", f"registry.model_name={settings.registry.model_name}",
         "--set", "deploy.endpoint_name=lookalike-test"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dry_run"] is True and result["champion_version"] == packaged_model.version
    body = result["requests"]["update"]["body"]
    assert body["served_entities"][0]["entity_version"] == str(packaged_model.version)
    assert result["requests"]["create"]["body"]["name"] == "lookalike-test"


def test_deploy_creates_then_leaves_the_endpoint_and_grants_query(packaged_model, tmp_path):
    """The real command against the real registry, the workspace API stood in for
    (lookalike.workspace.StandIn): create with the champion's version, CAN_QUERY for the
    configured principals, then "unchanged". Not covered: Databricks' own answers."""
    from lookalike.workspace import StandIn

    settings = packaged_model.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(HOME=str(tmp_path), LOOKALIKE_HOME=str(settings.home_path),
               LOOKALIKE_WORKSPACE_STANDIN=str(tmp_path / "ws"))
    command = [sys.executable, "-m", "lookalike.cli", "deploy",
               "--set", f"registry.model_name={settings.registry.model_name}",
               "--set", "deploy.endpoint_name=lookalike-test",
               "--set", "deploy.query_principals=[users]", "--set", "deploy.wait_seconds=0"]
    actions = []
    for _ in range(2):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        actions.append(json.loads(done.stdout.strip().splitlines()[-1])["action"])
    assert actions == ["create", "unchanged"]
    state = StandIn(tmp_path / "ws")._load()
    entity = state["endpoints"]["lookalike-test"]["config"]["served_entities"][0]
    assert entity["entity_version"] == str(packaged_model.version)
    assert state["permissions"]["/api/2.0/permissions/serving-endpoints/id-lookalike-test"][0] == {
        "group_name": "users", "permission_level": "CAN_QUERY"}
