"""The Databricks bundle as the CLI resolves it for one target, for tests and the rehearsal.

What ``databricks bundle validate -t TARGET -o json`` would resolve, for what Lookalike uses:
``include`` globs, variables (defaults, target overrides, ``--var`` values; a variable without
a value is an error, as in the CLI), ``${bundle.*}``, ``${workspace.current_user.*}``,
``${resources.<kind>.<key>.name}`` with development mode's name prefixes (schemas and registered
models become ``dev_<short_name>_<name>``: the CLI's apply_presets), and at run time
``{{job.run_id}}`` and ``{{job.parameters.*}}``. Unknown references fail.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REF = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
DYNAMIC = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
# What ${workspace.current_user.*} resolves to for the developer running the checks.
USER = {"short_name": "ada", "userName": "ada@example.com"}
# `--var` values a user passes (catalog has no default on purpose).
CLI_VARS = {"catalog": "shop"}
# What ${resources.apps.<key>.service_principal_client_id} is once the app exists (its
# service principal's application id, made by the workspace when the app is created).
APP_SERVICE_PRINCIPAL = "6f1c2a3b-0000-4000-8000-00000000a99e"
# Resource kinds whose names development mode prefixes with dev_<short_name>_.
DEV_PREFIXED = ("schemas", "registered_models")


def load_documents(root: Path = ROOT) -> list[tuple[Path, dict]]:
    """databricks.yml and its includes: [(file, document)], first the root."""
    root_file = root / "databricks.yml"
    documents = [(root_file, yaml.safe_load(root_file.read_text()))]
    for pattern in documents[0][1].get("include", []):
        matches = sorted(glob.glob(str(root / pattern)))
        assert matches, f"include {pattern!r} matches no file"
        documents += [(Path(m), yaml.safe_load(Path(m).read_text())) for m in matches]
    return documents


class Bundle:
    """One target of the bundle, resolved."""

    def __init__(self, target: str, cli_vars: dict | None = None, user: dict | None = None,
                 documents: list[tuple[Path, dict]] | None = None):
        self.documents = documents or load_documents()
        self.root = self.documents[0][1]
        self.target = target
        self.target_doc = self.root["targets"][target] or {}
        self.user = user or USER
        self.development = self.target_doc.get("mode") == "development"
        declared = self.root.get("variables", {})
        values = {name: spec.get("default") for name, spec in declared.items()}
        for name, value in (self.target_doc.get("variables") or {}).items():
            assert name in declared, f"target {target} sets undeclared variable {name}"
            values[name] = value
        for name, value in (CLI_VARS if cli_vars is None else cli_vars).items():
            values[name] = value
        missing = [n for n, v in values.items() if v is None]
        assert not missing, f"variables without a value (pass --var): {missing}"
        self.variables = values

    def resources(self, kind: str) -> list[tuple[Path, str, dict]]:
        """[(defining file, key, definition)] of one resource kind over all bundle files."""
        found = []
        for path, document in self.documents:
            for key, value in ((document or {}).get("resources", {}).get(kind) or {}).items():
                found.append((path, key, value))
        return found

    def resource(self, kind: str, key: str) -> dict:
        matches = [d for _, k, d in self.resources(kind) if k == key]
        assert matches, f"no resource {kind}.{key} in the bundle"
        return matches[0]

    def resource_name(self, kind: str, key: str) -> str:
        name = self.resolve(self.resource(kind, key)["name"])
        if self.development and kind in DEV_PREFIXED:
            return f"dev_{self.user['short_name']}_{name}"
        return name

    def resolve(self, value, depth: int = 0):
        """``${...}`` references substituted (recursively) in strings, lists and mappings."""
        if isinstance(value, dict):
            return {k: self.resolve(v, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, depth) for v in value]
        if not isinstance(value, str):
            return value
        assert depth < 10, f"reference cycle in {value!r}"

        def one(match):
            parts = match.group(1).split(".")
            if parts[0] == "var":
                assert parts[1] in self.variables, f"${{var.{parts[1]}}} is not declared"
                return str(self.resolve(self.variables[parts[1]], depth + 1))
            if parts[0] == "bundle":
                return {"name": self.root["bundle"]["name"], "target": self.target}[parts[1]]
            if parts[:2] == ["workspace", "current_user"]:
                return self.user[parts[2]]
            if parts[0] == "resources" and parts[3:] == ["name"]:
                return self.resource_name(parts[1], parts[2])
            if parts[0] == "resources" and parts[1] == "apps" and \
                    parts[3:] == ["service_principal_client_id"]:
                self.resource("apps", parts[2])
                return APP_SERVICE_PRINCIPAL
            raise AssertionError(f"unknown reference ${{{match.group(1)}}}")

        return REF.sub(one, value)

    def jobs(self) -> dict[str, dict]:
        return {key: job for _, key, job in self.resources("jobs")}

    def job_file(self, key: str) -> Path:
        return next(path for path, k, _ in self.resources("jobs") if k == key)

    def task_arguments(self, job_key: str, task: dict, job_run_id: str,
                       params: dict | None = None) -> list[str]:
        """A task's ``spark_python_task`` parameters as a run passes them; ``params`` are the
        job parameters a run overrides (``bundle run --params``)."""
        job = self.jobs()[job_key]
        declared = {p["name"]: self.resolve(p["default"]) for p in job.get("parameters", [])}
        assert set(params or {}) <= set(declared), f"{job_key}: no job parameter {params}"
        params = {**declared, **(params or {})}

        def dynamic(match):
            ref = match.group(1)
            if ref == "job.run_id":
                return job_run_id
            if ref.startswith("job.parameters."):
                name = ref.split(".", 2)[2]
                assert name in params, f"{job_key}.{task['task_key']}: no job parameter {name}"
                return str(params[name])
            raise AssertionError(f"{job_key}.{task['task_key']}: unsupported {{{{{ref}}}}} "
                                 "(task values cannot be set from spark_python_task scripts)")

        out = []
        for raw in task["spark_python_task"].get("parameters", []):
            value = DYNAMIC.sub(dynamic, self.resolve(raw))
            assert "${" not in value and "{{" not in value, f"unresolved {raw!r}"
            out.append(value)
        return out

    def cluster(self, job_key: str, cluster_key: str) -> dict:
        job = self.jobs()[job_key]
        return self.resolve(next(c["new_cluster"] for c in job["job_clusters"]
                                 if c["job_cluster_key"] == cluster_key))


def task_order(tasks: list[dict]) -> list[dict]:
    """Tasks in an order that respects ``depends_on`` (file order among the ready ones)."""
    done: list[str] = []
    ordered = []
    pending = list(tasks)
    while pending:
        ready = [t for t in pending
                 if all(d["task_key"] in done for d in t.get("depends_on", []))]
        assert ready, f"dependency cycle among {[t['task_key'] for t in pending]}"
        ordered.append(ready[0])
        done.append(ready[0]["task_key"])
        pending.remove(ready[0])
    return ordered
