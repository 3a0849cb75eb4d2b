"""The whole pipeline in one call, rerunnable: steps whose inputs did not change are skipped.

:func:`run_pipeline` runs ingest (Fashion-MNIST) -> tune -> train -> evaluate -> embed ->
build-index -> package/register -> promote. Each step has an *input fingerprint* (a hash of the
data versions, upstream outputs and settings it depends on) and a *validity check* of what it
recorded last time (the Delta version it wrote is still current, the MLflow run or model version
still exists, the index is on disk). Both are kept in ``LOOKALIKE_HOME/pipeline_state.json``; a
step is skipped when its fingerprint is unchanged and its recorded output is still valid, so a
rerun after a finished pipeline does nothing but these checks, and a new catalogue version or a
changed setting reruns exactly the steps downstream of it.

:func:`run_demo` runs the pipeline, exports a small catalogue sample for the Streamlit app
(:func:`export_catalogue_sample`), then starts the REST server and the app until Ctrl-C.

Progress goes to stderr (stdout stays one JSON line for schedulers, see :mod:`lookalike.cli`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from lookalike.config import Settings
from lookalike.preprocessing import thumbnail_png

STATE_FILE = "pipeline_state.json"
STATE_FORMAT = 1
SAMPLE_RELATIVE_PATH = Path("app") / "catalogue_sample.parquet"
SAMPLE_ENV = "LOOKALIKE_CATALOGUE_SAMPLE"
ENDPOINT_ENV = "LOOKALIKE_ENDPOINT"
CHAMPION = "champion"


# --------------------------------------------------------------------------- step machinery

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
    recorded output for the steps after it.
    """

    name: str
    inputs: Callable[[Context], Any]
    run: Callable[[Context], dict]
    valid: Callable[[Context, dict], bool] = lambda ctx, output: True
    enabled: Callable[[Context], bool] = lambda ctx: True
    disabled_reason: str = "disabled"


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


def _say(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


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
            reports[step.name] = {"status": "skipped", "reason": step.disabled_reason,
                                  "seconds": 0.0}
            _say(f"{prefix}: skipped ({step.disabled_reason})")
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
            _say(f"{prefix}: skipped, inputs unchanged since {recorded.get('finished_at')}")
            continue
        _say(f"{prefix}: running ({reason})")
        try:
            output = step.run(ctx)
        except BaseException as error:
            _say(f"{prefix}: FAILED after {time.monotonic() - tic:.1f}s: {error!r}")
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
        _say(f"{prefix}: done in {seconds:.1f}s {_brief(output)}")
    total = round(time.monotonic() - started, 2)
    ran = [n for n, r in reports.items() if r["status"] == "ran"]
    _say(f"{label} finished in {total:.1f}s: ran {ran or 'nothing'}")
    return {"steps": reports, "outputs": ctx.outputs, "seconds": total}


# --------------------------------------------------------------------------- inputs helpers

def delta_version(path: str | Path) -> int | None:
    """Latest version of a path-based Delta table from its ``_delta_log`` (no JVM); None if absent."""
    log_dir = Path(path) / "_delta_log"
    try:
        names = os.listdir(log_dir)
    except OSError:
        return None
    versions = [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]
    return max(versions) if versions else None


def _files_fingerprint(folders: list[Path], prefixes: tuple[str, ...]) -> list:
    found = []
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_file() and entry.name.startswith(prefixes):
                info = entry.stat()
                found.append([str(folder), entry.name, info.st_size, int(info.st_mtime)])
        if found:
            break
    return found


def _section(settings: Settings, *names: str) -> dict:
    return {name: dataclasses.asdict(getattr(settings, name)) for name in names}


def _products_path(settings: Settings) -> str:
    return settings.table_path(settings.catalogue.products_table)


def _embeddings_path(settings: Settings) -> str:
    return settings.table_path(settings.catalogue.embeddings_table)


def _products_version(ctx: Context) -> int | None:
    ingest = ctx.outputs.get("ingest") or {}
    version = ingest.get("table_version")
    return version if version is not None else delta_version(_products_path(ctx.settings))


def _run_id(output: dict | None) -> str | None:
    if not output:
        return None
    for key in ("run_id", "parent_run_id", "tuning_run_id"):
        if output.get(key):
            return str(output[key])
    return None


def _run_exists(settings: Settings, run_id: str | None) -> bool:
    if not run_id:
        return True
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    try:
        return mlflow.get_run(run_id).info.status == "FINISHED"
    except Exception:
        return False


def _model_version_exists(settings: Settings, version: Any) -> bool:
    if version in (None, ""):
        return True
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    try:
        mlflow.MlflowClient().get_model_version(settings.registry.model_name, str(version))
        return True
    except Exception:
        return False


def _search_space_text(settings: Settings) -> str:
    from lookalike.config import conf_dir

    try:
        return (conf_dir() / settings.tuning.search_space_file).read_text(encoding="utf-8")
    except OSError:
        return ""


# --------------------------------------------------------------------------- the steps

def _ingest(ctx: Context) -> dict:
    from lookalike.catalogue import ingest_fashion_mnist
    from lookalike.spark import get_spark

    summary = ingest_fashion_mnist(get_spark(ctx.settings), ctx.settings)
    return dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else dict(summary)


def _ingest_inputs(ctx: Context) -> dict:
    s = ctx.settings
    folders = [Path(s.catalogue.fashion_mnist_dir), s.home_path / "downloads" / "fashion-mnist"]
    catalogue = dataclasses.asdict(s.catalogue)
    catalogue.pop("embeddings_table")
    catalogue.pop("neighbours_table")
    return {"source": "fashion-mnist",
            "files": _files_fingerprint(folders, ("train-", "t10k-")),
            "catalogue": catalogue, "table": _products_path(s)}


def _ingest_valid(ctx: Context, output: dict) -> bool:
    return delta_version(_products_path(ctx.settings)) == output.get("table_version")


def _tune(ctx: Context) -> dict:
    from lookalike.tuning import tune

    result = tune(ctx.settings)
    return result if isinstance(result, dict) else {"result": result}


def _tune_inputs(ctx: Context) -> dict:
    return {"products_version": _products_version(ctx),
            **_section(ctx.settings, "tuning", "training", "model", "image"),
            "search_space": _search_space_text(ctx.settings)}


def _train(ctx: Context) -> dict:
    from lookalike.training import train_and_log

    params_run_id = None if ctx.skip_tuning else _run_id(ctx.outputs.get("tune"))
    return train_and_log(ctx.settings, params_run_id=params_run_id, use_tuned=True)


def _train_inputs(ctx: Context) -> dict:
    return {"products_version": _products_version(ctx),
            "params_run_id": None if ctx.skip_tuning else _run_id(ctx.outputs.get("tune")),
            **_section(ctx.settings, "training", "model", "image")}


def _train_run(ctx: Context) -> str:
    run_id = _run_id(ctx.outputs.get("train"))
    if not run_id:
        raise RuntimeError("the train step returned no run_id")
    return run_id


def _evaluate(ctx: Context) -> dict:
    from lookalike.evaluation import evaluate_run

    result = evaluate_run(ctx.settings, _train_run(ctx))
    return result if isinstance(result, dict) else {"result": result}


def _embed(ctx: Context) -> dict:
    from lookalike.embedding import embed_catalogue

    return embed_catalogue(ctx.settings, run_id=_train_run(ctx))


def _embed_valid(ctx: Context, output: dict) -> bool:
    return delta_version(_embeddings_path(ctx.settings)) == output.get("table_version")


def _build_index(ctx: Context) -> dict:
    from lookalike.embedding import build_index

    return build_index(ctx.settings, run_id=_train_run(ctx))


def _index_valid(ctx: Context, output: dict) -> bool:
    path = output.get("path")
    return not path or (Path(path) / "manifest.json").exists()


def _package(ctx: Context) -> dict:
    from lookalike.registry import package_and_register

    return package_and_register(ctx.settings, run_id=_train_run(ctx))


def _promote(ctx: Context) -> dict:
    from lookalike.registry import promote

    version = (ctx.outputs.get("package") or {}).get("version")
    result = promote(ctx.settings, version=None if version is None else str(version))
    return result if isinstance(result, dict) else {"result": result}


def default_steps() -> list[Step]:
    """The pipeline: each step's inputs name exactly what would change its result."""
    s = lambda ctx: ctx.settings  # noqa: E731
    return [
        Step("ingest", _ingest_inputs, _ingest, _ingest_valid),
        Step("tune", _tune_inputs, _tune,
             lambda ctx, out: _run_exists(s(ctx), _run_id(out)),
             enabled=lambda ctx: not ctx.skip_tuning, disabled_reason="--skip-tuning"),
        Step("train", _train_inputs, _train,
             lambda ctx, out: _run_exists(s(ctx), _run_id(out))),
        Step("evaluate",
             lambda ctx: {"run_id": _train_run(ctx), **_section(s(ctx), "evaluation")},
             _evaluate, enabled=_needs_evaluation,
             disabled_reason="the train step already evaluated and logged the metrics"),
        Step("embed",
             lambda ctx: {"run_id": _train_run(ctx), "products_version": _products_version(ctx),
                          **_section(s(ctx), "embedding", "image"),
                          "table": _embeddings_path(s(ctx))},
             _embed, _embed_valid),
        Step("build-index",
             lambda ctx: {"run_id": _train_run(ctx),
                          "embeddings_version": (ctx.outputs.get("embed") or {}).get(
                              "table_version"),
                          **_section(s(ctx), "index")},
             _build_index, _index_valid),
        Step("package",
             lambda ctx: {"run_id": _train_run(ctx),
                          "index": {k: (ctx.outputs.get("build-index") or {}).get(k)
                                    for k in ("path", "count", "embeddings_version")},
                          "evaluation": ctx.outputs.get("evaluate"),
                          **_section(s(ctx), "serving", "registry", "image")},
             _package, lambda ctx, out: _model_version_exists(s(ctx), out.get("version"))),
        Step("promote",
             lambda ctx: {"version": (ctx.outputs.get("package") or {}).get("version"),
                          **_section(s(ctx), "registry")},
             _promote),
    ]


_NOT_METRICS = {"processes", "products_version", "run_id", "params_run_id", "data_path"}


def _numbers(output: dict | None) -> dict:
    return {k: v for k, v in (output or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_METRICS}


def _metrics(outputs: dict) -> dict:
    """Retrieval metrics of the model: the train step's (it evaluates), updated by evaluate's."""
    metrics = _numbers(outputs.get("train"))
    metrics.update(_numbers(outputs.get("evaluate")))
    return metrics


def _needs_evaluation(ctx: Context) -> bool:
    """train_and_log evaluates and logs the metrics itself; evaluate only if they are missing."""
    return ctx.settings.registry.promotion_metric not in (ctx.outputs.get("train") or {})


def serve_commands(settings: Settings) -> dict:
    uri = f"models:/{settings.registry.model_name}@{CHAMPION}"
    profile = f" --profile {settings.profile}" if settings.profile != "base" else ""
    return {
        "serve_command": f"lookalike serve{profile}",
        "mlflow_command": (f"MLFLOW_TRACKING_URI={settings.tracking_uri} mlflow models serve "
                           f"-m {uri} -h {settings.serving.host} -p {settings.serving.port} "
                           "--env-manager local"),
        "model_uri": uri,
    }


def run_pipeline(settings: Settings, force: bool = False, skip_tuning: bool = False,
                 steps: list[Step] | None = None) -> dict:
    """Run the pipeline, skipping unchanged steps; return a JSON-able summary.

    Summary: ``steps`` (status ran/skipped, reason, seconds per step), ``metrics``,
    ``run_id``, ``products_version``, ``model_name``, ``model_version``, ``alias``,
    ``promoted`` (the promote step's output), ``serve_command``, ``seconds``.
    """
    _say(f"profile {settings.profile}, home {settings.home_path}"
         + (", forced" if force else "") + (", skipping tuning" if skip_tuning else ""))
    result = run_steps(settings, steps if steps is not None else default_steps(), force=force,
                       skip_tuning=skip_tuning)
    outputs = result["outputs"]
    package = outputs.get("package") or {}
    promote = outputs.get("promote") or {}
    summary = {
        "profile": settings.profile,
        "home": str(settings.home_path),
        "steps": result["steps"],
        "metrics": _metrics(outputs),
        "run_id": _run_id(outputs.get("train")),
        "products_version": (outputs.get("ingest") or {}).get("table_version"),
        "model_name": settings.registry.model_name,
        "model_version": package.get("version"),
        # The alias the packaged version holds now: champion unless promotion kept the old one.
        "alias": ((CHAMPION if promote.get("champion_version") == package.get("version")
                   else "challenger") if promote else None),
        "promoted": promote,
        **serve_commands(settings),
        "seconds": result["seconds"],
    }
    return summary


# --------------------------------------------------------------------------- catalogue sample

def catalogue_sample_path(settings: Settings) -> Path:
    """LOOKALIKE_CATALOGUE_SAMPLE if set, else LOOKALIKE_HOME/app/catalogue_sample.parquet."""
    env = os.environ.get(SAMPLE_ENV)
    return Path(env).expanduser() if env else settings.home_path / SAMPLE_RELATIVE_PATH


def export_catalogue_sample(settings: Settings, n: int = 200, path: str | Path | None = None,
                            spark=None) -> dict:
    """Write a small browsable sample of the catalogue for the Streamlit app.

    Parquet with columns ``product_id, category, title, thumbnail`` (PNG bytes, longest side
    <= 160 px), about ``n`` rows spread evenly over categories, chosen by a stable hash of
    product_id (the same rows on every export of the same catalogue). The app reads it instead
    of Delta, so it needs no JVM. Returns ``{path, rows, products_version}``.
    """
    import pandas as pd
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from lookalike.catalogue import read_products
    from lookalike.spark import get_spark

    spark = spark or get_spark(settings)
    products, version = read_products(spark, settings)
    categories = products.select("category").distinct().count()
    per_category = max(1, -(-n // max(1, categories)))
    window = Window.partitionBy("category").orderBy(F.xxhash64("product_id"), "product_id")
    rows = (products.select("product_id", "category", "title", "image")
            .withColumn("_rank", F.row_number().over(window))
            .where(F.col("_rank") <= per_category)
            .orderBy(F.xxhash64("product_id"), "product_id")
            .limit(n)
            .drop("_rank")
            .toPandas())
    frame = pd.DataFrame({
        "product_id": rows["product_id"].astype(str),
        "category": rows["category"].astype(str),
        "title": rows["title"],
        "thumbnail": [thumbnail_png(bytes(b), 160) for b in rows["image"]],
    })
    target = Path(path) if path else catalogue_sample_path(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, target)
    return {"path": str(target), "rows": int(len(frame)), "products_version": int(version)}


def sample_step(n: int = 200) -> Step:
    """The sample export as a skippable step (run by :func:`run_demo`)."""
    return Step(
        "export-sample",
        lambda ctx: {"products_version": delta_version(_products_path(ctx.settings)), "n": n,
                     "path": str(catalogue_sample_path(ctx.settings))},
        lambda ctx: export_catalogue_sample(ctx.settings, n),
        lambda ctx, out: Path(out.get("path", "")).exists())


# --------------------------------------------------------------------------- demo

def app_script() -> Path:
    """streamlit_app/app.py of the checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "streamlit_app" / "app.py"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {url} "
                               "answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last error: {last})")


def start_app(endpoint: str, port: int, sample_path: str | Path | None = None,
              token: str | None = None, host: str = "127.0.0.1", timeout: float = 60.0,
              log_file: str | Path | None = None, max_upload_mb: int = 10
              ) -> tuple[subprocess.Popen, str]:
    """Start ``streamlit run streamlit_app/app.py`` on host:port against ``endpoint``.

    Returns (process, app URL) once Streamlit's health check answers. The process runs in its
    own session so :func:`stop_process` can end it with its children.
    """
    script = app_script()
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: the demo app ships with the repository, "
                                "not the wheel")
    env = dict(os.environ)
    env[ENDPOINT_ENV] = endpoint
    if sample_path:
        env[SAMPLE_ENV] = str(sample_path)
    if token:
        env["LOOKALIKE_TOKEN"] = token
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    command = [sys.executable, "-m", "streamlit", "run", str(script),
               "--server.address", host, "--server.port", str(port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none",
               # The endpoint refuses larger images anyway; refuse them at the upload already.
               "--server.maxUploadSize", str(max_upload_mb)]
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=str(script.parents[1]))
    finally:
        if log_file:
            output.close()
    url = f"http://{host}:{port}"
    try:
        wait_http(f"{url}/_stcore/health", timeout, process)
    except BaseException:
        stop_process(process)
        raise
    return process, url


def stop_process(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM (to its process group when it leads one), then SIGKILL after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    try:
        group = os.getpgid(process.pid)
    except OSError:
        group = None
    own_group = group is not None and group == process.pid
    try:
        if own_group:
            os.killpg(group, signal.SIGTERM)
        else:
            process.terminate()
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if own_group:
            os.killpg(group, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def _stop_local_spark() -> None:
    """Free the driver JVM before the servers start (locally only; Databricks owns its own)."""
    from lookalike.spark import on_databricks

    if on_databricks() or "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    # stop() leaves the driver JVM running; it exits when its stdin (our pipe) closes.
    gateway = SparkContext._gateway
    if gateway is not None:
        try:
            gateway.shutdown()
            proc = getattr(gateway, "proc", None)
            if proc is not None:
                proc.stdin.close()
                proc.wait(timeout=20)
        except Exception as error:  # noqa: BLE001 - freeing memory is best effort
            _say(f"could not stop the Spark JVM ({error!r}); continuing")
        SparkContext._gateway = None
        SparkContext._jvm = None


def run_demo(settings: Settings, run_pipeline_first: bool = True, app_port: int = 8501,
             sample_size: int = 200) -> dict:
    """Pipeline (skipping finished steps), catalogue sample, REST server, Streamlit app.

    Prints both URLs and blocks until Ctrl-C / SIGTERM or until either process exits, then
    stops both. Returns a summary dict (URLs, pipeline summary, how it ended).
    """
    from lookalike.serving import start_server

    summary = run_pipeline(settings) if run_pipeline_first else None
    if delta_version(_products_path(settings)) is None:
        sample_path = None
        _say("no products table yet: the app's catalogue browsing stays off")
    else:
        sample = run_steps(settings, [sample_step(sample_size)], label="catalogue sample")
        sample_path = sample["outputs"]["export-sample"]["path"]
    _stop_local_spark()

    model_uri = serve_commands(settings)["model_uri"]
    server = app = None
    endpoint = app_url = None
    stopped_by = "process exit"
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _say(f"starting REST server for {model_uri} on {settings.serving.host}:"
             f"{settings.serving.port}")
        server, endpoint = start_server(settings, model_uri, settings.serving.port)
        _say(f"starting Streamlit app on 127.0.0.1:{app_port}")
        app, app_url = start_app(endpoint, app_port, sample_path,
                                 max_upload_mb=max(1, settings.serving.max_image_bytes // 1_000_000))
        print(f"\n  REST endpoint : {endpoint}/invocations\n  Demo app      : {app_url}\n"
              "  Ctrl-C stops both.\n", file=sys.stderr, flush=True)
        while server.poll() is None and app.poll() is None:
            time.sleep(0.5)
        which = "REST server" if server.poll() is not None else "Streamlit app"
        _say(f"{which} exited; stopping the other")
    except KeyboardInterrupt:
        stopped_by = {signal.SIGTERM: "SIGTERM"}.get(received[-1] if received else None,
                                                     "Ctrl-C")
        _say(f"{stopped_by}: stopping the app and the REST server")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_process(app)
        stop_process(server)
    return {"endpoint": endpoint, "app_url": app_url,
            "catalogue_sample": sample_path, "pipeline": summary, "stopped_by": stopped_by}
