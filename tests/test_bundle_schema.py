"""The bundle files are valid against the Databricks CLI's own bundle JSON schema, offline.

`databricks bundle validate` needs a workspace; this catches what it would reject earlier:
unknown or misspelt keys, wrong enum values, wrong types, and references (${var.X},
${resources.<kind>.<key>...}) to things the bundle does not define.

Schema: tests/bundle_schema/jsonschema.json, vendored unmodified from databricks/cli
(bundle/schema/jsonschema.json; commit, version and how to refresh it: SOURCE.md there).
What it does and does not check, found by reading it:

* It declares no ``$schema``; it uses ``$defs`` and the CLI's libs/jsonschema follows draft
  2020-12, so `Draft202012Validator` is used. Every ``$ref`` is internal (``#/$defs/...``).
* Every non-string value is ``oneOf`` [the real type, a string matching a ``${...}`` reference
  pattern], so a field may hold a *pure* reference (``num_workers: ${var.gpu_workers}``) but
  not a misspelt enum (``SINGEL_USER``) or the wrong type (``"two"``).
* Every object has ``additionalProperties: false`` (329 of them) except the root, which allows
  any key on purpose (keys that only hold YAML anchors). Unknown keys are therefore rejected at
  every level but the top; the top-level keys are checked here against the root's properties.
* Enums the CLI defines itself are plain strings in the schema: ``targets.<name>.mode`` (the
  CLI rejects ``mode: prodution`` later, in its ValidateTargetMode mutator), ``artifacts.*.type``
  and ``variables.*.type`` (its validate:enum step warns). They are checked here (CLI_ENUMS).
* The reference patterns are not anchored (JSON Schema ``pattern`` is a search), so any string
  that *contains* a reference passes for any typed field: ``num_workers: "${var.n} workers"`` is
  accepted by the schema, and this test does not catch it either.
* The reference patterns are written with ``\\p{L}`` / ``\\p{N}`` (Go / ECMAScript regex), which
  Python's `re` cannot compile; they are rewritten to `re` equivalents in memory.

Each file is validated on its own: every bundle file (root or include) is an instance of the
root schema. YAML is read with PyYAML (YAML 1.1, like tests/test_bundle.py).
"""

from __future__ import annotations

import copy
import functools
import glob
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "tests" / "bundle_schema" / "jsonschema.json"

# Top-level keys that only hold YAML anchors (the root schema allows any key for them).
ANCHOR_KEYS: set[str] = set()
# Enum fields the CLI checks but the schema leaves as plain strings (path pattern -> values).
CLI_ENUMS = {
    ("targets", "*", "mode"): {"development", "production"},
    ("artifacts", "*", "type"): {"whl", "jar"},
    ("targets", "*", "artifacts", "*", "type"): {"whl", "jar"},
    ("variables", "*", "type"): {"complex"},
}

# The CLI's reference syntax (libs/dyn/dynvar/ref.go), \p{L} / \p{N} in Python `re` terms.
_SEGMENT = r"[^\W\d_]+(?:[-_]*[^\W_]+)*"
REFERENCE = re.compile(
    rf"\$\{{({_SEGMENT}(?:\.{_SEGMENT}(?:\[[0-9]+\])*)*(?:\[[0-9]+\])*)\}}")


def _python_pattern(pattern: str) -> str:
    """A schema regex (Go/ECMAScript \\p classes) as a Python `re` pattern."""
    python = (pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]")
              .replace(r"\p{L}", r"[^\W\d_]").replace(r"\p{N}", r"\d"))
    assert r"\p" not in python, f"unhandled unicode class in schema pattern {pattern!r}"
    re.compile(python)
    return python


def _with_python_patterns(node):
    if isinstance(node, dict):
        return {key: (_python_pattern(value) if key == "pattern" and isinstance(value, str)
                      else _with_python_patterns(value)) for key, value in node.items()}
    if isinstance(node, list):
        return [_with_python_patterns(value) for value in node]
    return node


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return _with_python_patterns(json.loads(SCHEMA_FILE.read_text()))


@functools.lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_schema())


def _load_bundle() -> list[tuple[Path, dict]]:
    """databricks.yml and every file its include globs match: [(file, document)], root first."""
    root_file = ROOT / "databricks.yml"
    root = yaml.safe_load(root_file.read_text()) or {}
    documents = [(root_file, root)]
    for pattern in root.get("include") or []:
        matches = sorted(glob.glob(str(ROOT / pattern), recursive=True))
        assert matches, f"include {pattern!r} matches no file"
        documents += [(Path(m), yaml.safe_load(Path(m).read_text()) or {}) for m in matches]
    return documents


BUNDLE = _load_bundle()


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- schema errors --------------------------------------------------------------------------

def _is_reference_alternative(subschema: dict) -> bool:
    return subschema.get("type") == "string" and subschema.get("pattern", "").startswith(r"\$\{")


def _leaves(error):
    """The errors that explain ``error``: for a oneOf/anyOf, descend into the one alternative
    that fits the value's shape (not the ${...} string forms of an object, not a branch that
    only failed on type), so a typo deep in a job is reported where it is."""
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        yield error
        return
    branches: dict[int, list] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    candidates = list(branches)
    if not (isinstance(error.instance, str) and "${" in error.instance):
        candidates = [b for b in candidates
                      if not _is_reference_alternative(error.validator_value[b])] or candidates
    shaped = [b for b in candidates if not all(
        e.validator == "type" and len(e.relative_schema_path) == 2 for e in branches[b])]
    candidates = shaped or candidates
    if len(candidates) == 1:
        for sub in branches[candidates[0]]:
            yield from _leaves(sub)
    else:
        yield error


def _at(node, pattern, where="$"):
    """(json path, value) of every value at a key pattern ('*': any key of a mapping)."""
    if not pattern:
        yield where, node
        return
    if isinstance(node, dict):
        keys = list(node) if pattern[0] == "*" else [pattern[0]] if pattern[0] in node else []
        for key in keys:
            yield from _at(node[key], pattern[1:], f"{where}.{key}")


def schema_errors(document) -> list[str]:
    """'<json path>: <message>' for everything the CLI schema rejects in one bundle file
    document, plus what the schema leaves to the CLI: top-level keys and CLI_ENUMS."""
    found = []
    for error in _validator().iter_errors(document):
        for leaf in _leaves(error):
            found.append(f"{leaf.json_path}: {leaf.message}")
    if isinstance(document, dict):
        known = set(_schema()["properties"]) | ANCHOR_KEYS
        for key in document:
            if key not in known:
                found.append(f"$: unknown top-level key {key!r} (known: {sorted(known)})")
        for pattern, values in CLI_ENUMS.items():
            for where, value in _at(document, pattern):
                if value not in values:
                    found.append(f"{where}: {value!r} is not one of {sorted(values)}")
    return sorted(set(found))


def test_vendored_schema_is_draft_2020_12_and_strict_below_the_root():
    raw = json.loads(SCHEMA_FILE.read_text())
    assert "$defs" in raw and raw.get("$schema") in (None, Draft202012Validator.META_SCHEMA["$id"])
    assert {"bundle", "include", "resources", "targets", "variables"} <= set(raw["properties"])
    job = raw["$defs"]["github.com"]["databricks"]["cli"]["bundle"]["config"]
    job = job["resources.Job"]["oneOf"][0]
    assert job["additionalProperties"] is False


@pytest.mark.parametrize("path,document", BUNDLE, ids=[_name(p) for p, _ in BUNDLE])
def test_bundle_file_matches_the_cli_schema(path, document):
    errors = schema_errors(document)
    assert not errors, f"{_name(path)} is rejected by the CLI bundle schema:\n" + "\n".join(
        f"  {_name(path)}: {e}" for e in errors)


# ---- the check can fail: small variants of the real documents --------------------------------

def _jobs_document():
    for path, document in BUNDLE:
        if (document.get("resources") or {}).get("jobs"):
            return path, document
    pytest.skip("no bundle file defines jobs")


def _first_job(document):
    return next(iter(document["resources"]["jobs"].items()))


def _typo_job_key(doc):
    key, job = _first_job(doc)
    job["max_concurrent_run"] = job.pop("max_concurrent_runs", 1)
    return f"$.resources.jobs.{key}", "'max_concurrent_run' was unexpected"


def _typo_task_key(doc):
    key, job = _first_job(doc)
    task = job["tasks"][0]
    task["spark_python_tsk"] = task.pop("spark_python_task", {"python_file": "x.py"})
    return f"$.resources.jobs.{key}.tasks[0]", "'spark_python_tsk' was unexpected"


def _typo_cluster_key(doc):
    key, job = _first_job(doc)
    job["job_clusters"][0]["new_cluster"]["num_worker"] = 2
    return f"$.resources.jobs.{key}.job_clusters[0].new_cluster", "'num_worker' was unexpected"


def _bad_security_mode(doc):
    key, job = _first_job(doc)
    job["job_clusters"][0]["new_cluster"]["data_security_mode"] = "SINGEL_USER"
    return (f"$.resources.jobs.{key}.job_clusters[0].new_cluster.data_security_mode",
            "'SINGEL_USER' is not one of")


def _bad_health_operator(doc):
    key, job = _first_job(doc)
    job["health"] = {"rules": [{"metric": "RUN_DURATION_SECONDS", "op": "GREATER",
                                "value": 60}]}
    return f"$.resources.jobs.{key}.health.rules[0].op", "'GREATER' is not one of"


def _bad_integer(doc):
    key, job = _first_job(doc)
    job["timeout_seconds"] = "four hours"
    return f"$.resources.jobs.{key}.timeout_seconds", "'four hours' is not of type 'integer'"


def _bad_resource_kind(doc):
    doc["resources"]["job"] = doc["resources"].pop("jobs")
    return "$.resources", "'job' was unexpected"


JOBS_VARIANTS = [_typo_job_key, _typo_task_key, _typo_cluster_key, _bad_security_mode,
                 _bad_health_operator, _bad_integer, _bad_resource_kind]


@pytest.mark.parametrize("mutate", JOBS_VARIANTS, ids=[f.__name__[1:] for f in JOBS_VARIANTS])
def test_schema_rejects_a_broken_jobs_file(mutate):
    _, document = _jobs_document()
    assert not schema_errors(document)          # the real file passes (see the test above)
    broken = copy.deepcopy(document)
    where, message = mutate(broken)
    errors = schema_errors(broken)
    assert any(e.startswith(f"{where}: ") and message in e for e in errors), errors


def _root():
    return copy.deepcopy(BUNDLE[0][1])


def _typo_target_mode(doc):
    doc["targets"]["prod"]["mode"] = "prodution"
    return "$.targets.prod.mode", "'prodution' is not one of"


def _typo_target_key(doc):
    doc["targets"]["dev"]["defualt"] = doc["targets"]["dev"].pop("default", True)
    return "$.targets.dev", "'defualt' was unexpected"


def _typo_variable_key(doc):
    name, spec = next(iter(doc["variables"].items()))
    spec["defualt"] = spec.pop("default", "")
    return f"$.variables.{name}", "'defualt' was unexpected"


def _typo_run_as(doc):
    doc["targets"]["prod"]["run_as"] = {"service_principal": "${var.service_principal}"}
    return "$.targets.prod.run_as", "'service_principal' was unexpected"


def _bad_permission_level(doc):
    doc["targets"]["prod"]["permissions"] = [{"level": "CAN_ADMIN", "group_name": "admins"}]
    return "$.targets.prod.permissions[0].level", "'CAN_ADMIN' is not one of"


def _typo_top_level_key(doc):
    doc["variabels"] = doc.pop("variables")
    return "$", "unknown top-level key 'variabels'"


def _bad_artifact_type(doc):
    name, artifact = next(iter(doc["artifacts"].items()))
    artifact["type"] = "wheel"
    return f"$.artifacts.{name}.type", "'wheel' is not one of"


def _bad_sync_type(doc):
    doc["sync"] = {"exclude": ".venv"}
    return "$.sync.exclude", "'.venv' is not of type 'array'"


ROOT_VARIANTS = [_typo_target_mode, _typo_target_key, _typo_variable_key, _typo_run_as,
                 _bad_permission_level, _typo_top_level_key, _bad_artifact_type, _bad_sync_type]


@pytest.mark.parametrize("mutate", ROOT_VARIANTS, ids=[f.__name__[1:] for f in ROOT_VARIANTS])
def test_schema_rejects_a_broken_databricks_yml(mutate):
    assert not schema_errors(BUNDLE[0][1])
    broken = _root()
    where, message = mutate(broken)
    errors = schema_errors(broken)
    assert any(e.startswith(f"{where}: ") and message in e for e in errors), errors


def test_what_the_schema_alone_lets_through():
    """Why top-level keys and CLI_ENUMS are checked by hand, and what stays unchecked."""
    broken = _root()
    broken["targets"]["prod"]["mode"] = "prodution"
    broken["artifacts"][next(iter(broken["artifacts"]))]["type"] = "wheel"
    broken["variabels"] = broken.pop("variables")
    assert not list(_validator().iter_errors(broken))
    assert len(schema_errors(broken)) == 3
    _, jobs = _jobs_document()
    jobs = copy.deepcopy(jobs)
    _first_job(jobs)[1]["timeout_seconds"] = "${var.timeout} seconds"     # unanchored pattern
    assert not schema_errors(jobs)


# ---- references ------------------------------------------------------------------------------

def _strings(node, path="$"):
    """(json path, string) for every string value (keys are not interpolated)."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")


def reference_errors(documents) -> list[str]:
    """Undeclared ${var.X} / ${variables.X...}, ${resources.<kind>.<key>...} naming no
    resource, references to config roots that do not exist, '${' that is no reference,
    target variable overrides of undeclared variables."""
    declared: set[str] = set()
    resources: set[tuple[str, str]] = set()
    for _, document in documents:
        declared |= set(document.get("variables") or {})
        scopes = [document] + [t or {} for t in (document.get("targets") or {}).values()]
        for scope in scopes:
            for kind, defined in (scope.get("resources") or {}).items():
                resources |= {(kind, key) for key in (defined or {})}
    roots = set(_schema()["properties"]) | {"var"}

    errors = []
    for path, document in documents:
        for target, spec in (document.get("targets") or {}).items():
            for name in (spec or {}).get("variables") or {}:
                if name not in declared:
                    errors.append(f"{_name(path)}: $.targets.{target}.variables.{name}: "
                                  "overrides a variable not declared under variables:")
        for where, text in _strings(document):
            covered = 0
            for match in REFERENCE.finditer(text):
                covered += text.count("${", match.start(), match.end())
                parts = re.split(r"[.\[]", match.group(1))
                problem = None
                if parts[0] not in roots:
                    problem = f"unknown root {parts[0]!r} (known: {sorted(roots)})"
                elif parts[0] in ("var", "variables") and (
                        len(parts) < 2 or parts[1] not in declared):
                    problem = "variable not declared under variables:"
                elif parts[0] == "resources" and (
                        len(parts) < 3 or (parts[1], parts[2]) not in resources):
                    problem = "names no resource defined in the bundle"
                if problem:
                    errors.append(f"{_name(path)}: {where}: {match.group(0)}: {problem}")
            if text.count("${") > covered:
                errors.append(f"{_name(path)}: {where}: {text!r}: '${{' that is no valid "
                              "reference (the CLI would leave it as literal text)")
    return errors


def test_every_reference_names_something_the_bundle_defines():
    errors = reference_errors(BUNDLE)
    assert not errors, "bad references in the bundle:\n" + "\n".join(f"  {e}" for e in errors)


def test_reference_check_can_fail():
    path, jobs = _jobs_document()
    jobs = copy.deepcopy(jobs)
    key, job = _first_job(jobs)
    job["description"] = "${var.catalgo} ${resources.jobs.nope.id} ${vars.schema} ${ var.x }"
    job["tags"] = {"main": f"${{resources.jobs.{key}.id}}", "env": "${variables.schema.value}"}
    root = _root()
    root["targets"]["dev"].setdefault("variables", {})["undeclared"] = 1
    errors = "\n".join(reference_errors([(BUNDLE[0][0], root), (path, jobs)]))
    for expected in ("${var.catalgo}: variable not declared", "${resources.jobs.nope.id}: names no",
                     "${vars.schema}: unknown root", "'${' that is no valid reference",
                     "$.targets.dev.variables.undeclared: overrides a variable not declared"):
        assert expected in errors, errors
    assert "tags.main" not in errors and "tags.env" not in errors, errors
