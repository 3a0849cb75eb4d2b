"""The Databricks model serving endpoint follows the champion (``lookalike deploy``).

After a promotion the ``deploy`` job task (or ``lookalike deploy``) creates the endpoint
``deploy.endpoint_name`` or updates its config to serve ``registry.model_name`` at the version
behind alias ``champion``; an endpoint already serving that version is left alone. Requests go
through :func:`lookalike.workspace.api` (the Databricks SDK's authenticated client: cluster
credentials in a job, ``DATABRICKS_HOST`` / ``DATABRICKS_TOKEN`` or a CLI profile elsewhere),
and the request built by :func:`endpoint_requests` is exactly what is sent, so ``--dry-run``
can print it without a workspace. ``deploy.query_principals`` (groups, or service principals'
application ids) get CAN_QUERY on the endpoint.
"""

from __future__ import annotations

import logging
import os
import time

from lookalike.config import Settings
from lookalike.console import say

log = logging.getLogger(__name__)

ENDPOINTS_PATH = "/api/2.0/serving-endpoints"


def served_entity_name(model_name: str, version: str | int) -> str:
    """``lookalike-7`` for ``main.shop.lookalike`` v7 (endpoint entity names allow no dots)."""
    return f"{model_name.rsplit('.', 1)[-1]}-{version}"


def endpoint_config(settings: Settings, version: str | int) -> dict:
    """The endpoint config serving ``version`` of the registered model with all the traffic."""
    deploy = settings.deploy
    entity = served_entity_name(settings.registry.model_name, version)
    return {
        "served_entities": [{
            "name": entity,
            "entity_name": settings.registry.model_name,
            "entity_version": str(version),
            "workload_size": deploy.workload_size,
            "workload_type": deploy.workload_type,
            "scale_to_zero_enabled": deploy.scale_to_zero,
        }],
        "traffic_config": {"routes": [{"served_model_name": entity,
                                       "traffic_percentage": 100}]},
    }


def endpoint_requests(settings: Settings, version: str | int) -> dict[str, dict]:
    """The two possible requests: ``create`` (no such endpoint yet) and ``update``."""
    name = settings.deploy.endpoint_name
    config = endpoint_config(settings, version)
    return {
        "create": {"method": "POST", "path": ENDPOINTS_PATH,
                   "body": {"name": name, "config": config}},
        "update": {"method": "PUT", "path": f"{ENDPOINTS_PATH}/{name}/config", "body": config},
    }


def serves_version(endpoint: dict, model_name: str, version: str | int) -> bool:
    """Whether an endpoint (GET answer) already serves exactly ``model_name`` v``version``."""
    config = endpoint.get("config") or endpoint.get("pending_config") or {}
    entities = config.get("served_entities") or config.get("served_models") or []
    return bool(entities) and all(
        (e.get("entity_name") or e.get("model_name")) == model_name
        and str(e.get("entity_version") or e.get("model_version")) == str(version)
        for e in entities)


def has_credentials() -> bool:
    """Whether the SDK can authenticate here (a job cluster, env vars or a CLI config)."""
    from lookalike.runtime import on_databricks
    from lookalike.workspace import STANDIN_ENV

    return (on_databricks() or bool(os.environ.get("DATABRICKS_HOST"))
            or bool(os.environ.get(STANDIN_ENV))
            or bool(os.environ.get("DATABRICKS_CONFIG_PROFILE"))
            or os.path.exists(os.path.expanduser("~/.databrickscfg")))


def _get_endpoint(api, name: str) -> dict | None:
    from databricks.sdk.errors import NotFound

    try:
        return api.do("GET", f"{ENDPOINTS_PATH}/{name}")
    except NotFound:
        return None


def _wait_ready(api, name: str, seconds: int) -> str:
    """Poll until the endpoint's config update finishes; its final ``config_update`` state."""
    deadline = time.monotonic() + seconds
    while True:
        state = (api.do("GET", f"{ENDPOINTS_PATH}/{name}").get("state") or {})
        update = state.get("config_update", "NOT_UPDATING")
        if update == "UPDATE_FAILED":
            raise RuntimeError(f"serving endpoint {name!r}: config update failed ({state})")
        if update != "IN_PROGRESS" or time.monotonic() >= deadline:
            return update
        time.sleep(15)


def deploy_champion(settings: Settings, dry_run: bool = False) -> dict:
    """Point the serving endpoint at the champion; with ``dry_run``, only say how."""
    from lookalike.registry import CHAMPION, champion

    current = champion(settings)
    if current is None:
        raise ValueError(f"registered model {settings.registry.model_name!r} has no "
                         f"'{CHAMPION}': nothing to deploy yet")
    name, version = settings.deploy.endpoint_name, str(current.version)
    requests = endpoint_requests(settings, version)
    result = {"endpoint": name, "model_name": settings.registry.model_name,
              "champion_version": int(version), "dry_run": dry_run}
    if dry_run and not has_credentials():
        # No workspace to ask whether the endpoint exists: show both possible requests.
        return {**result, "action": "create if absent, else update", "requests": requests}

    from lookalike import workspace

    api = workspace.api()
    existing = _get_endpoint(api, name)
    if existing is not None and serves_version(existing, settings.registry.model_name, version):
        if not dry_run:
            result["granted"] = workspace.grant_endpoint_query(
                existing["id"], list(settings.deploy.query_principals), api)
        return {**result, "action": "unchanged"}
    action = "update" if existing is not None else "create"
    request = requests[action]
    result.update(action=action, request=request)
    if dry_run:
        return result
    say("deploy", f"{action} endpoint {name} -> {settings.registry.model_name} v{version}")
    answer = api.do(request["method"], request["path"], body=request["body"])
    endpoint_id = (answer or {}).get("id") or _get_endpoint(api, name)["id"]
    result["granted"] = workspace.grant_endpoint_query(
        endpoint_id, list(settings.deploy.query_principals), api)
    if settings.deploy.wait_seconds:
        result["state"] = _wait_ready(api, name, settings.deploy.wait_seconds)
    log.info("deploy: %s", result)
    return result
