"""The Databricks workspace REST API: the one part of Lookalike that cannot run off a workspace.

Every workspace call goes through :func:`api`, an object with the Databricks SDK's
``do(method, path, query=None, body=None)``: the experiment's folder, the Unity Catalog schema
and Volume, grants, the model serving endpoint and its permissions. On a cluster (or with
``DATABRICKS_HOST`` / a CLI profile) it is the SDK's authenticated client. With
``LOOKALIKE_WORKSPACE_STANDIN=<folder>``, set only by the workspace rehearsal
(``tests/rehearsal``), it is :class:`StandIn`: the few paths Lookalike uses, answered from a
JSON file in that folder, with Volumes created as folders under ``LOOKALIKE_VOLUMES_ROOT``.
Any other path raises, so a new workspace call cannot slip past the rehearsal unnoticed.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path

from lookalike.runtime import volumes_root

STANDIN_ENV = "LOOKALIKE_WORKSPACE_STANDIN"
UC = "/api/2.1/unity-catalog"
ENDPOINTS = "/api/2.0/serving-endpoints"


def api():
    """The workspace API client: the SDK's, or the rehearsal's stand-in."""
    folder = os.environ.get(STANDIN_ENV)
    if folder:
        return StandIn(Path(folder))
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient().api_client


def _not_found():
    from databricks.sdk.errors import NotFound

    return NotFound


def exists(client, path: str) -> bool:
    """Whether a GET of ``path`` finds something (404 = no)."""
    try:
        client.do("GET", path)
        return True
    except _not_found():
        return False


def check_workspace_path(path: str) -> str:
    """``path`` if it is a well-formed absolute workspace path, else ValueError saying why."""
    if not path.startswith("/") or "//" in path or path != posixpath.normpath(path):
        raise ValueError(f"{path!r} is not an absolute workspace path such as "
                         "/Users/<you>/lookalike or /Shared/lookalike/prod")
    return path


def ensure_folder(path: str, client=None) -> None:
    """Create workspace folder ``path`` and its parents (the MLflow experiment's parent)."""
    client = client or api()
    client.do("POST", "/api/2.0/workspace/mkdirs", body={"path": check_workspace_path(path)})


def ensure_schema(catalog: str, schema: str, client=None) -> bool:
    """Create Unity Catalog schema ``catalog.schema`` unless it exists; True if created."""
    client = client or api()
    if exists(client, f"{UC}/schemas/{catalog}.{schema}"):
        return False
    client.do("POST", f"{UC}/schemas", body={"catalog_name": catalog, "name": schema})
    return True


def ensure_volume(catalog: str, schema: str, volume: str, client=None) -> bool:
    """Create managed Volume ``catalog.schema.volume`` unless it exists; True if created."""
    client = client or api()
    if exists(client, f"{UC}/volumes/{catalog}.{schema}.{volume}"):
        return False
    client.do("POST", f"{UC}/volumes", body={"catalog_name": catalog, "schema_name": schema,
                                             "name": volume, "volume_type": "MANAGED"})
    return True


def grant_endpoint_query(endpoint_id: str, principals: list[str], client=None) -> list[dict]:
    """CAN_QUERY on serving endpoint ``endpoint_id`` for each principal (a group name, or an
    application id (uuid) of a service principal). Returns the access list sent."""
    uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
    acl = [{"service_principal_name" if uuid.match(p) else "group_name": p,
            "permission_level": "CAN_QUERY"} for p in principals]
    if acl:
        (client or api()).do("PATCH", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}",
                             body={"access_control_list": acl})
    return acl


class StandIn:
    """The workspace API paths Lookalike calls, answered locally (rehearsal only).

    State lives in ``<folder>/workspace.json``: folders, schemas, volumes, endpoints, grants
    and every call, so the rehearsal can check what a job asked of the workspace.
    """

    ROOTS = ("/Users/", "/Shared/", "/Workspace/")

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / "workspace.json"

    def _load(self) -> dict:
        if self.file.exists():
            return json.loads(self.file.read_text(encoding="utf-8"))
        return {"folders": [], "schemas": [], "volumes": [], "endpoints": {},
                "permissions": {}, "calls": []}

    def _save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.file)

    def do(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
           **_):
        state = self._load()
        state["calls"].append({"method": method, "path": path, "body": body})
        try:
            return self._answer(state, method, path, body or {})
        finally:
            self._save(state)

    def _answer(self, state: dict, method: str, path: str, body: dict):
        not_found = _not_found()
        if (method, path) == ("POST", "/api/2.0/workspace/mkdirs"):
            folder = check_workspace_path(body["path"])
            if not folder.startswith(self.ROOTS):
                raise PermissionError(f"mkdirs {folder}: outside /Users, /Shared, /Workspace")
            parts = folder.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                state["folders"] = sorted({*state["folders"], "/" + "/".join(parts[:i])})
            return {}
        if method == "GET" and path.startswith(f"{UC}/schemas/"):
            if path.rsplit("/", 1)[1] not in state["schemas"]:
                raise not_found(f"schema {path.rsplit('/', 1)[1]} does not exist")
            return {"full_name": path.rsplit("/", 1)[1]}
        if (method, path) == ("POST", f"{UC}/schemas"):
            state["schemas"] = sorted({*state["schemas"],
                                       f"{body['catalog_name']}.{body['name']}"})
            return {}
        if method == "GET" and path.startswith(f"{UC}/volumes/"):
            if path.rsplit("/", 1)[1] not in state["volumes"]:
                raise not_found(f"volume {path.rsplit('/', 1)[1]} does not exist")
            return {"full_name": path.rsplit("/", 1)[1]}
        if (method, path) == ("POST", f"{UC}/volumes"):
            schema = f"{body['catalog_name']}.{body['schema_name']}"
            if schema not in state["schemas"]:
                raise not_found(f"schema {schema} does not exist")
            self._create_volume(body["catalog_name"], body["schema_name"], body["name"])
            state["volumes"] = sorted({*state["volumes"], f"{schema}.{body['name']}"})
            return {}
        if method == "PATCH" and path.startswith(f"{UC}/permissions/"):
            state["permissions"].setdefault(path, []).extend(body.get("changes", []))
            return {}
        if method == "PATCH" and path.startswith("/api/2.0/permissions/serving-endpoints/"):
            state["permissions"].setdefault(path, []).extend(body["access_control_list"])
            return {}
        if path.startswith(ENDPOINTS):
            return self._endpoint(state, method, path[len(ENDPOINTS):], body)
        raise NotImplementedError(f"the workspace stand-in does not know {method} {path}")

    def _endpoint(self, state: dict, method: str, rest: str, body: dict):
        endpoints = state["endpoints"]
        if method == "POST" and rest == "":
            if body["name"] in endpoints:
                raise ValueError(f"endpoint {body['name']} already exists")
            endpoints[body["name"]] = {"name": body["name"], "id": f"id-{body['name']}",
                                       "config": body["config"],
                                       "state": {"ready": "READY",
                                                 "config_update": "NOT_UPDATING"}}
            return endpoints[body["name"]]
        name, _, tail = rest.strip("/").partition("/")
        if name not in endpoints:
            raise _not_found()(f"serving endpoint {name} does not exist")
        if method == "GET" and not tail:
            return endpoints[name]
        if method == "PUT" and tail == "config":
            endpoints[name]["config"] = body
            return endpoints[name]
        raise NotImplementedError(f"the workspace stand-in does not know {method} "
                                  f"{ENDPOINTS}{rest}")

    @staticmethod
    def _create_volume(catalog: str, schema: str, volume: str) -> None:
        # The rehearsal's cluster refuses mkdir at the top three levels of the Volumes root
        # except from here: a Volume exists only once it was created.
        (volumes_root() / catalog / schema / volume).mkdir(parents=True, exist_ok=True)
