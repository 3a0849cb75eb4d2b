"""The step engine: fingerprints, skipping, invalid outputs, disabled steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookalike.pipeline.engine import Step, run_steps
from lookalike.pipeline.steps import run_pipeline


@pytest.fixture()
def local_settings(base_settings, tmp_path):
    return base_settings.replace(home=str(tmp_path / "home"))


def _counting_steps(calls: list, source: Path) -> list[Step]:
    def ingest(ctx):
        calls.append("ingest")
        return {"table_version": int(source.read_text())}

    def train(ctx):
        calls.append("train")
        # Like MLflow: every training run has a new id.
        return {"run_id": f"run-{ctx.outputs['ingest']['table_version']}-{len(calls)}",
                "a_map_at_r": 0.5}

    def package(ctx):
        calls.append("package")
        return {"version": len([c for c in calls if c == "package"])}

    return [
        Step("ingest", lambda ctx: {"source": source.read_text()}, ingest),
        Step("train", lambda ctx: {"data": ctx.outputs["ingest"]["table_version"],
                                   "epochs": ctx.settings.training.epochs}, train),
        Step("package", lambda ctx: {"run": ctx.outputs["train"]["run_id"]}, package,
             valid=lambda ctx, out: out["version"] > 0),
    ]


def test_unchanged_steps_are_skipped_and_changes_rerun_downstream(local_settings, tmp_path,
                                                                  capsys):
    source = tmp_path / "source.txt"
    source.write_text("1")
    calls: list[str] = []

    first = run_pipeline(local_settings, steps=_counting_steps(calls, source))
    assert calls == ["ingest", "train", "package"]
    assert {s["status"] for s in first["steps"].values()} == {"ran"}
    assert first["run_id"] == "run-1-2" and first["model_version"] == 1
    assert first["metrics"] == {"a_map_at_r": 0.5}
    assert first["serve_command"].startswith("lookalike serve")
    assert f"models:/{local_settings.registry.model_name}@champion" in first["mlflow_command"]
    json.dumps(first)  # what the CLI prints
    err = capsys.readouterr().err
    assert "(2/3) train: running (never ran)" in err and "done in" in err

    calls.clear()
    second = run_pipeline(local_settings, steps=_counting_steps(calls, source))
    assert calls == []
    assert {s["status"] for s in second["steps"].values()} == {"skipped"}
    assert second["run_id"] == "run-1-2" and second["model_version"] == 1  # recorded outputs
    assert "skipped, inputs unchanged" in capsys.readouterr().err

    # Same source content rewritten: ingest reruns, gives the same version: the rest skips.
    state = json.loads((local_settings.home_path / "pipeline_state.json").read_text())
    state["steps"]["ingest"]["fingerprint"] = "stale"
    (local_settings.home_path / "pipeline_state.json").write_text(json.dumps(state))
    calls.clear()
    run_pipeline(local_settings, steps=_counting_steps(calls, source))
    assert calls == ["ingest"]

    # New data: everything downstream reruns.
    source.write_text("2")
    calls.clear()
    third = run_pipeline(local_settings, steps=_counting_steps(calls, source))
    assert calls == ["ingest", "train", "package"] and third["run_id"] == "run-2-2"

    # A changed setting reruns the steps that read it and those after them.
    calls.clear()
    changed = local_settings.replace(training={"epochs": 99})
    run_pipeline(changed, steps=_counting_steps(calls, source))
    assert calls == ["train", "package"]

    # force reruns everything.
    calls.clear()
    run_pipeline(changed, force=True, steps=_counting_steps(calls, source))
    assert calls == ["ingest", "train", "package"]


def test_invalid_recorded_output_reruns_and_failure_keeps_earlier_steps(local_settings,
                                                                         tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("1")
    calls: list[str] = []
    run_pipeline(local_settings, steps=_counting_steps(calls, source))

    state_file = local_settings.home_path / "pipeline_state.json"
    state = json.loads(state_file.read_text())
    state["steps"]["package"]["output"]["version"] = 0  # e.g. the model version was deleted
    state_file.write_text(json.dumps(state))
    calls.clear()
    run_pipeline(local_settings, steps=_counting_steps(calls, source))
    assert calls == ["package"]

    def boom(ctx):
        raise RuntimeError("train failed")

    source.write_text("3")
    steps = _counting_steps(calls, source)
    steps[1] = Step("train", steps[1].inputs, boom)
    with pytest.raises(RuntimeError, match="train failed"):
        run_pipeline(local_settings, steps=steps)
    state = json.loads(state_file.read_text())
    assert state["steps"]["ingest"]["output"] == {"table_version": 3}  # kept
    calls.clear()
    run_pipeline(local_settings, steps=_counting_steps(calls, source))
    assert calls == ["train", "package"]  # resumes after the finished ingest


def test_disabled_step_keeps_its_recorded_output(local_settings, tmp_path):
    outputs = []
    steps = [Step("tune", lambda ctx: 1, lambda ctx: {"run_id": "t1"},
                  enabled=lambda ctx: not ctx.skip_tuning,
                  # A reason may depend on the context (the tune step's does).
                  disabled_reason=lambda ctx: "--skip-tuning" * ctx.skip_tuning),
             Step("train", lambda ctx: ctx.outputs.get("tune"),
                  lambda ctx: outputs.append(ctx.outputs.get("tune")) or {"run_id": "r"})]
    run_steps(local_settings, steps)
    report = run_steps(local_settings, steps, skip_tuning=True)
    assert report["steps"]["tune"] == {"status": "skipped", "reason": "--skip-tuning",
                                       "seconds": 0.0}
    assert report["steps"]["train"]["status"] == "skipped"
    assert outputs == [{"run_id": "t1"}]
