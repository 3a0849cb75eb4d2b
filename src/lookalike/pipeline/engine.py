"""The step engine: run named steps in order, skipping those whose inputs did not change.

Each :class:`Step` has an *input fingerprint* (a hash of the data versions, upstream outputs and
settings it depends on) and a *validity check* of what it recorded last time (the Delta version
it wrote is still current, the MLflow run or model version still exists, the index is on disk).
Both are kept in ``LOOKALIKE_HOME/pipeline_state.json``; a step is skipped when its fingerprint
is unchanged and its recorded output still stands, so a rerun after a finished pipeline does
nothing but these checks, and a new catalogue version or a changed setting reruns exactly the
steps downstream of it. Progress goes to stderr, one line per step.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from lookalike.config import Settings
from lookalike.console import say

STATE_FILE = "pipeline_state.json"
STATE_FORMAT = 1

@dataclass
class Context:
    """What steps see: settings, the outputs of the steps before them (fresh or recorded)."""

    settings: Settings
    outputs: dict[str, Any] = field(default_factory=dict)
    skip_tuning: bool = False


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    ``inputs(ctx)`` returns JSON-able data whose hash is the fingerprint; ``run(ctx)`` does the
    work and returns a JSON-able dict; ``valid(ctx, output)`` tells whether a recorded output
    still stands (default: always). ``enabled(ctx)`` False skips the step, keeping its last
    recorded output for the steps after it; ``disabled_reason`` (a string, or a function of
    the context) says why.
    """

    name: str
    inputs: Callable[[Context], Any]
    run: Callable[[Context], dict]
    valid: Callable[[Context, dict], bool] = lambda ctx, output: True
    enabled: Callable[[Context], bool] = lambda ctx: True
    disabled_reason: str | Callable[[Context], str] = "disabled"


def fingerprint(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def state_path(settings: Settings) -> Path:
    return settings.home_path / STATE_FILE


def load_state(settings: Settings) -> dict:
    path = state_path(settings)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"format": STATE_FORMAT, "steps": {}}
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return {"format": STATE_FORMAT, "steps": {}}
    state.setdefault("steps", {})
    return state


def save_state(settings: Settings, state: dict) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _brief(output: dict, limit: int = 160) -> str:
    text = json.dumps({k: v for k, v in output.items() if not isinstance(v, (dict, list))},
                      default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def run_steps(settings: Settings, steps: list[Step], force: bool = False,
              skip_tuning: bool = False, label: str = "pipeline") -> dict:
    """Run ``steps`` in order with fingerprint skipping; return per-step reports and outputs."""
    state = load_state(settings)
    ctx = Context(settings=settings, skip_tuning=skip_tuning)
    reports: dict[str, dict] = {}
    started = time.monotonic()
    for number, step in enumerate(steps, 1):
        prefix = f"({number}/{len(steps)}) {step.name}"
        recorded = state["steps"].get(step.name)
        tic = time.monotonic()
        if not step.enabled(ctx):
            if recorded:
                ctx.outputs[step.name] = recorded["output"]
            why = step.disabled_reason
            why = why(ctx) if callable(why) else why
            reports[step.name] = {"status": "skipped", "reason": why, "seconds": 0.0}
            say("pipeline", f"{prefix}: skipped ({why})")
            continue
        key = fingerprint(step.inputs(ctx))
        reason = None
        if force:
            reason = "forced"
        elif recorded is None:
            reason = "never ran"
        elif recorded.get("fingerprint") != key:
            reason = "inputs changed"
        elif not step.valid(ctx, recorded["output"]):
            reason = "recorded output no longer valid"
        if reason is None:
            ctx.outputs[step.name] = recorded["output"]
            seconds = round(time.monotonic() - tic, 2)
            reports[step.name] = {"status": "skipped", "reason": "inputs unchanged",
                                  "seconds": seconds, "since": recorded.get("finished_at")}
            say("pipeline", f"{prefix}: skipped, inputs unchanged since {recorded.get('finished_at')}")
            continue
        say("pipeline", f"{prefix}: running ({reason})")
        try:
            output = step.run(ctx)
        except BaseException as error:
            say("pipeline", f"{prefix}: FAILED after {time.monotonic() - tic:.1f}s: {error!r}")
            raise
        output = json.loads(json.dumps(output if output is not None else {}, default=str))
        seconds = round(time.monotonic() - tic, 2)
        ctx.outputs[step.name] = output
        # Recomputed after the run: a step may create what its own inputs look at (ingest
        # downloads the source files), and what counts is what the next run will see.
        key = fingerprint(step.inputs(ctx))
        state["steps"][step.name] = {"fingerprint": key, "output": output, "seconds": seconds,
                                     "finished_at": datetime.now(timezone.utc).isoformat(
                                         timespec="seconds")}
        save_state(settings, state)
        reports[step.name] = {"status": "ran", "reason": reason, "seconds": seconds}
        say("pipeline", f"{prefix}: done in {seconds:.1f}s {_brief(output)}")
    total = round(time.monotonic() - started, 2)
    ran = [n for n, r in reports.items() if r["status"] == "ran"]
    say("pipeline", f"{label} finished in {total:.1f}s: ran {ran or 'nothing'}")
    return {"steps": reports, "outputs": ctx.outputs, "seconds": total}
