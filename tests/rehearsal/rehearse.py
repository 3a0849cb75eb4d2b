"""A Databricks workspace, rehearsed on this machine: every task of every bundle job of one
target, in dependency order, each as its own process, as a job cluster would run it.

What is real: the bundle as the CLI resolves it (tests/bundle_model.py), each task's exact
entry point and parameters, the job clusters' environment variables, DATABRICKS_RUNTIME_VERSION,
a Spark session configured by the cluster (spark-defaults.conf, a Hive metastore shared by the
tasks, Unity Catalog three-level names in ``spark_catalog``), a real ``mlflow server`` on
loopback as the workspace's tracking server and registry (tasks, tuning trials and Horovod
ranks reach it only through what they inherit), Unity Catalog Volumes as a local folder that
exists only once created and refuses appends (tests/rehearsal/cluster/sitecustomize.py), and
at the end the endpoint the deploy task configured, served by ``mlflow models serve`` of that
model version, answering one query.

What is stood in for (lookalike.workspace.StandIn) or not covered is listed in NOT_COVERED and
printed by the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import interpreted_spark
import numpy as np
from bundle_model import Bundle, task_order

from lookalike.processes import free_port, stop_process, wait_http

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"
# The catalog a rehearsal passes with --var: the local metastore's only catalog.
CATALOG = "spark_catalog"
# Every task is a new driver JVM that lives seconds, much of them loading and compiling code
# it runs once: the quick compiler alone, a serial collector and a class-data archive of
# Spark's and Delta's classes (made once per Java, Spark and jars, `Workspace._class_archive`)
# start it faster, which is all they change. The JVM refuses an archive while a non-empty folder is on
# its class path, so the cluster's spark-defaults.conf reaches spark-submit as
# --properties-file and Spark's conf folder (SPARK_CONF_DIR) stays empty.
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# What the archive is made from: a Delta table created, merged into, read back and its history,
# through Arrow, as the tasks do.
ARCHIVE_WORKLOAD = """
from delta.tables import DeltaTable
from pyspark import SparkContext
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
spark.sql("CREATE SCHEMA IF NOT EXISTS warm")
spark.sql("CREATE TABLE IF NOT EXISTS warm.t (id STRING, v INT) USING delta")
rows = spark.createDataFrame([(str(i), i) for i in range(100)], "id string, v int")
table = DeltaTable.forName(spark, "warm.t")
table.alias("a").merge(rows.alias("b"), "a.id = b.id").whenNotMatchedInsertAll().execute()
table.history().collect()
spark.table("warm.t").toPandas()
spark.stop()
# The JVM writes the archive as it exits: wait for that before the first task starts.
gateway = SparkContext._gateway
gateway.shutdown()
gateway.proc.stdin.close()
gateway.proc.wait(timeout=120)
"""

NOT_COVERED = (
    "the Databricks CLI itself (bundle deploy/run): the bundle is resolved by "
    "tests/bundle_model.py and checked against the CLI's JSON schema (tests/test_bundle_schema.py)",
    "Unity Catalog: grants, the UC model registry API ('databricks-uc'): a real MLflow server's "
    "registry stands in, with the same three-level name",
    "the workspace REST API (experiment folders, schemas, Volumes, serving endpoints, "
    "permissions): lookalike.workspace.StandIn answers it from a JSON file",
    "Databricks model serving: the endpoint is `mlflow models serve` of the version the deploy "
    "task configured",
    "authentication: 'databricks' tracking with DATABRICKS_HOST/TOKEN is replaced by "
    "MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI naming the loopback server",
    "the wheel installed as a cluster library: tasks import the checkout (tests/test_runtime_compat.py "
    "checks the wheel against DBR 15.4 LTS ML's packages)",
    "DBR 15.4 LTS ML's own packages (TensorFlow 2.16 + tf-keras, MLflow 2.13): tasks run on this "
    "machine's locked stack (TF 2.15, Keras 2), so the clusters' TF_USE_LEGACY_KERAS=1 is left "
    "out of the tasks' environment",
    "GPUs and several nodes: a GPU cluster is local[<workers>] (one task slot per GPU worker)",
    "tuning a fine-tuning profile on the workspace: prod's photos profile does not tune "
    "(tuning.enabled false); dev tunes the compact CNN, and a fine-tuning trial's schedule is "
    "tests/learning/test_tuning.py's",
    "native writes to Volumes (TensorFlow, faiss, the JVM): only Python's are checked",
)


def fashion_mnist_slice(folder: Path, train: int, test: int) -> Path:
    """The four Fashion-MNIST IDX files, gzipped, with the first ``train`` / ``test`` images:
    from the Debian package when installed, else synthetic ones with the same layout."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Path("/usr/share/datasets/fashion-mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("t10k", test)):
        images_file = source / f"{split}-images-idx3-ubyte.gz"
        if images_file.exists():
            from lookalike.catalogue.sources import read_idx

            images = read_idx(images_file)[:n]
            labels = read_idx(source / f"{split}-labels-idx1-ubyte.gz")[:n]
        else:
            labels = (np.arange(n) % 10).astype(np.uint8)
            images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
            for i, label in enumerate(labels):
                images[i, 2 * label:2 * label + 8, 4:24] = 220
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as out:
            out.write(struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as out:
            out.write(struct.pack(">HBBI", 0, 8, 1, n) + labels.tobytes())
    return folder


def shop_photos(folder: Path, categories: int = 4, per_category: int = 10) -> int:
    """A shop's upload: one sub-folder per category of small generated colour photos."""
    from imagegen import encode_image

    rng = np.random.default_rng(1)
    palette = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 180, 30), (120, 40, 160)]
    count = 0
    for c in range(categories):
        (folder / f"category{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_category):
            image = np.full((96, 96, 3), 255, np.uint8)
            top, left = rng.integers(8, 30, 2)
            image[top:top + 50 - 6 * c, left:left + 40 + 4 * c] = palette[c]
            image = np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255)
            (folder / f"category{c}" / f"p{i:03d}.png").write_bytes(
                encode_image(image.astype(np.uint8)))
            count += 1
    return count


@contextlib.contextmanager
def file_server(folder: Path):
    """A loopback HTTP server of ``folder``: the internet a cluster would download from."""
    handler = partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401 - no request log on the test's output
        pass


def _archive_folder() -> Path:
    """Where class archives (and the empty conf folder they are valid with) are kept."""
    from lookalike.spark import default_jars_dir

    return default_jars_dir().parent / "class-archives"


def _write_properties(path: Path, lines: dict[str, str]) -> None:
    """A spark-defaults.conf: one ``key value`` line per setting."""
    path.write_text("".join(f"{k} {v}\n" for k, v in lines.items()), encoding="utf-8")


class Workspace:
    """One target's workspace: tracking server, metastore, Volumes, stand-in API state."""

    def __init__(self, target: str, workdir: Path, scale: dict[str, str]):
        self.bundle = Bundle(target, cli_vars={"catalog": CATALOG})
        self.target = target
        self.workdir = workdir
        self.scale = scale
        self.volumes = workdir / "Volumes"
        self.volumes.mkdir(parents=True)
        self.standin = workdir / "workspace-api"
        self.timings: list[tuple[str, float]] = []
        self.server: subprocess.Popen | None = None
        self.tracking_uri = ""
        # SPARK_CONF_DIR: empty (FAST_JVM), and one path for every rehearsal, as it is part
        # of the class path a class archive is valid for.
        self.spark_conf_dir = _archive_folder() / "empty-spark-conf"

    # -- the workspace's services -----------------------------------------------------------
    def start(self) -> None:
        """The tracking server (sqlite store, artifacts served through it) and Spark's conf."""
        port = free_port()
        store = self.workdir / "mlflow"
        store.mkdir()
        log = self.workdir / "mlflow-server.log"
        with open(log, "wb") as out:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                 str(port), "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                 "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # MLflow 3's server also starts a job runner and eight Huey consumers for its
                # GenAI jobs (~50 CPU-s of imports on 2 cores); no job here submits one, and a
                # workspace's tracking server is Databricks' own, not this one.
                env={**os.environ, "PATH": _venv_path(),
                     "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self.server.log_path = log  # type: ignore[attr-defined]
        self.tracking_uri = f"http://127.0.0.1:{port}"
        wait_http(f"{self.tracking_uri}/health", 120, self.server, log)
        self._spark_conf()

    def stop(self) -> None:
        if self.server is not None:
            stop_process(self.server)

    def _spark_conf(self) -> None:
        from lookalike.spark import default_jars_dir

        jars = ",".join(str(p) for p in sorted(default_jars_dir().glob("*.jar")))
        self.spark_conf_dir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "spark-properties"
        conf.mkdir()
        log4j = conf / "log4j2.properties"
        lines = {
            "spark.master": "local[2]",
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            # Managed tables outlive a task, as in Unity Catalog: a metastore on disk.
            "spark.sql.catalogImplementation": "hive",
            "spark.sql.warehouse.dir": str(self.workdir / "warehouse"),
            "spark.driver.extraJavaOptions": (f"-Dderby.system.home={self.workdir / 'metastore'} "
                                              f"-Dlog4j2.configurationFile={log4j} {FAST_JVM}"),
            "spark.jars": jars,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.memory": "2g",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "2",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            # Interpreted plans, as in every JVM of the tests (tests/interpreted_spark.py).
            **interpreted_spark.SETTINGS,
        }
        log4j.write_text(
            "rootLogger.level = error\nrootLogger.appenderRef.stdout.ref = console\n"
            "appender.console.type = Console\nappender.console.name = console\n"
            "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = %d %p %c: %m%n\n", encoding="utf-8")
        java = lines["spark.driver.extraJavaOptions"]
        archive = self._class_archive(lines)
        if archive is not None:
            lines["spark.driver.extraJavaOptions"] = f"{java} -XX:SharedArchiveFile={archive}"
        _write_properties(conf / "spark-defaults.conf", lines)

    def _class_archive(self, lines: dict[str, str]) -> Path | None:
        """The class-data archive of what a task's JVM loads (ARCHIVE_WORKLOAD, run in a
        scratch metastore and warehouse), made once per Java, Spark and jars and kept beside
        the Delta jars; a lock lets the other rehearsal (another xdist worker) wait for it.
        None, and tasks start without one, if the JVM made none."""
        import pyspark

        from lookalike.spark import default_jars_dir

        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
        key = hashlib.sha256("\n".join([
            java, pyspark.__version__, str(Path(pyspark.__file__).parent), FAST_JVM,
            str(self.spark_conf_dir),
            *(f"{p}:{p.stat().st_size}" for p in sorted(default_jars_dir().glob("*.jar")))
        ]).encode()).hexdigest()[:16]
        folder = _archive_folder()
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder / f"spark-{key}.jsa"
        with open(folder / f"spark-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not archive.exists():
                self._make_class_archive(lines, archive)
        return archive if archive.exists() else None

    def _make_class_archive(self, lines: dict[str, str], archive: Path) -> None:
        scratch = self.workdir / "archive-run"
        scratch.mkdir()
        partial = scratch / "spark-classes.jsa"  # renamed when whole: readers never see half
        dump = {**lines,
                "spark.sql.warehouse.dir": str(scratch / "warehouse"),
                "spark.driver.extraJavaOptions": (
                    lines["spark.driver.extraJavaOptions"].replace(
                        str(self.workdir / "metastore"), str(scratch / "metastore"))
                    + f" -XX:ArchiveClassesAtExit={partial}")}
        _write_properties(scratch / "spark-defaults.conf", dump)
        env = {**self.cluster_env({}), "PYSPARK_SUBMIT_ARGS":
               f"--properties-file {scratch / 'spark-defaults.conf'} pyspark-shell"}
        done = subprocess.run([sys.executable, "-c", ARCHIVE_WORKLOAD], env=env,
                              cwd=str(scratch), capture_output=True, text=True, timeout=300)
        if done.returncode == 0 and partial.exists():
            os.replace(partial, archive)
        else:
            print(f"[rehearsal] no class archive (exit {done.returncode}): tasks start without "
                  f"one\n{done.stderr[-2000:]}", file=sys.stderr)

    # -- `bundle deploy` --------------------------------------------------------------------
    def deploy(self) -> list[str]:
        """What `bundle deploy` creates before any job runs: the declared schemas, Volumes and
        registered models (through the stand-in API and the real registry)."""
        import mlflow

        from lookalike import workspace

        made = []
        with self._env({workspace.STANDIN_ENV: str(self.standin),
                        "LOOKALIKE_VOLUMES_ROOT": str(self.volumes)}):
            api = workspace.api()
            for key in (k for _, k, _ in self.bundle.resources("schemas")):
                spec = self.bundle.resolve(self.bundle.resource("schemas", key))
                workspace.ensure_schema(spec["catalog_name"],
                                        self.bundle.resource_name("schemas", key), api)
                made.append(f"schema {self.bundle.resource_name('schemas', key)}")
            for key in (k for _, k, _ in self.bundle.resources("volumes")):
                spec = self.bundle.resolve(self.bundle.resource("volumes", key))
                workspace.ensure_volume(spec["catalog_name"], spec["schema_name"],
                                        spec["name"], api)
                made.append(f"volume {spec['schema_name']}.{spec['name']}")
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri,
                                     registry_uri=self.tracking_uri)
        for key in (k for _, k, _ in self.bundle.resources("registered_models")):
            spec = self.bundle.resolve(self.bundle.resource("registered_models", key))
            name = ".".join([spec["catalog_name"], spec["schema_name"],
                             self.bundle.resource_name("registered_models", key)])
            client.create_registered_model(name)
            made.append(f"registered model {name}")
        return made

    def volume_path(self, path: str) -> Path:
        """Where a ``/Volumes/...`` path of the bundle lives on this machine."""
        assert path.startswith("/Volumes/"), path
        return self.volumes / path[len("/Volumes/"):]

    # -- `bundle run` -----------------------------------------------------------------------
    def run_job(self, job_key: str, job_run_id: str, params: dict | None = None
                ) -> dict[str, dict]:
        """Every task of ``job_key`` in dependency order, ``params`` overriding job parameters
        (``bundle run --params``); {task_key: its JSON result}."""
        job = self.bundle.jobs()[job_key]
        return {task["task_key"]: self.run_task(job_key, task, job_run_id, params)
                for task in task_order(job["tasks"])}

    def run_task(self, job_key: str, task: dict, job_run_id: str,
                 params: dict | None = None) -> dict:
        spt = task["spark_python_task"]
        python_file = (self.bundle.job_file(job_key).parent / spt["python_file"]).resolve()
        arguments = [self._map(a) for a in self.bundle.task_arguments(job_key, task,
                                                                      job_run_id, params)]
        env = self.cluster_env(self.bundle.cluster(job_key, task["job_cluster_key"]))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(python_file), *arguments], env=env,
                              cwd=str(self.workdir), capture_output=True, text=True,
                              timeout=900)
        seconds = time.perf_counter() - started
        name = f"{self.target}: {job_key}.{task['task_key']}"
        self.timings.append((name, seconds))
        if done.returncode != 0:
            raise AssertionError(f"{name} failed (exit {done.returncode}) in {seconds:.0f}s: "
                                 f"python {python_file.name} {' '.join(arguments)}\n"
                                 f"--- stderr ---\n{done.stderr[-6000:]}\n"
                                 f"--- stdout ---\n{done.stdout[-2000:]}")
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def cluster_env(self, cluster: dict) -> dict[str, str]:
        """A job cluster's environment: its spark_env_vars, the runtime's markers, Spark's
        conf, the Volumes, the workspace API, and nothing of this test process's settings."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "JAVA_HOME", "TMPDIR", "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE")
        env = {k: v for k, v in os.environ.items() if k in keep}
        workers = int(cluster.get("num_workers", 1))
        gpu = "spark.task.resource.gpu.amount" in (cluster.get("spark_conf") or {})
        properties = self.workdir / "spark-properties" / (
            "spark-defaults.conf" if not gpu else f"spark-defaults-gpu{workers}.conf")
        if gpu and not properties.exists():
            # One task slot per GPU worker (no GPUs here: the slots, not the devices).
            text = (properties.parent / "spark-defaults.conf").read_text().replace(
                "spark.master local[2]", f"spark.master local[{workers}]")
            properties.write_text(text)
        env.update({k: self._map(str(v)) for k, v in (cluster.get("spark_env_vars") or {}).items()})
        if not _keras_3_here():
            # The runtime's TF 2.16 needs it (tf-keras); this machine's TF 2.15 is Keras 2
            # already and has no tf-keras to switch to.
            env.pop("TF_USE_LEGACY_KERAS", None)
        env.update({
            "PATH": _venv_path(),
            "DATABRICKS_RUNTIME_VERSION": "15.4",
            # The cluster's spark-defaults.conf; Spark's conf folder stays empty (FAST_JVM).
            "SPARK_CONF_DIR": str(self.spark_conf_dir),
            "PYSPARK_SUBMIT_ARGS": f"--properties-file {properties} pyspark-shell",
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PYTHONPATH": str(CLUSTER_DIR),
            "LOOKALIKE_VOLUMES_ROOT": str(self.volumes),
            "LOOKALIKE_WORKSPACE_STANDIN": str(self.standin),
            # What `databricks` / `databricks-uc` are on a cluster: the workspace's server.
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_REGISTRY_URI": self.tracking_uri,
            "TMPDIR": str(self._scratch()),
        })
        env.update(self.scale)
        return env

    def _scratch(self) -> Path:
        path = self.workdir / "local_disk"
        path.mkdir(exist_ok=True)
        return path

    def _map(self, value: str) -> str:
        return value.replace("/Volumes/", f"{self.volumes}/")

    @contextlib.contextmanager
    def _env(self, values: dict[str, str]):
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # -- what the jobs left ---------------------------------------------------------------
    def state(self) -> dict:
        return json.loads((self.standin / "workspace.json").read_text())

    def query_endpoint(self, name: str) -> tuple[int, object]:
        """Serve what endpoint ``name`` was configured with; one query with a new image."""
        import base64

        from imagegen import encode_image

        from lookalike.config import load_settings
        from lookalike.serving.server import post_json, start_server, stop_server

        entity = self.state()["endpoints"][name]["config"]["served_entities"][0]
        settings = load_settings(overrides={
            "home": str(self.workdir / "standin-endpoint"),
            "mlflow": {"tracking_uri": self.tracking_uri, "registry_uri": self.tracking_uri},
            "serving": {"workers": 1}})
        uri = f"models:/{entity['entity_name']}/{entity['entity_version']}"
        process, url = start_server(settings, uri, timeout=300)
        image = np.full((64, 64, 3), 255, np.uint8)
        image[10:50, 20:44] = (40, 60, 200)
        query = {"image": base64.b64encode(encode_image(image)).decode("ascii")}
        try:
            return post_json(f"{url}/invocations", {"dataframe_records": [query],
                                                    "params": {"k": 3}})
        finally:
            stop_server(process)


def _keras_3_here() -> bool:
    from lookalike.runtime import prefer_keras_2

    return prefer_keras_2({})


def _venv_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
