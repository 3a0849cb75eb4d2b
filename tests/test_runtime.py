"""On a Databricks cluster (DATABRICKS_RUNTIME_VERSION set): where logs and MLflow go.
Each test here fails on the code before the "Databricks for real" issue (#18)."""

from __future__ import annotations

from lookalike.config import load_settings
from lookalike.runtime import local_scratch, volume_of


def test_logs_go_to_local_disk_not_the_volume_on_a_cluster(monkeypatch, tmp_path):
    """Issue 18, item 1: a Volume takes no appends, and may not exist before the first task
    creates it, so the library log is on the driver's disk there."""
    monkeypatch.setenv("LOOKALIKE_VOLUMES_ROOT", str(tmp_path / "Volumes"))
    home = tmp_path / "Volumes/main/shop/lookalike"
    settings = load_settings(overrides={"home": str(home)})
    assert settings.logs_path == home / "logs"            # a laptop: under home
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert volume_of(settings.home_path) == ("main", "shop", "lookalike")
    assert volume_of(settings.logs_path) is None
    assert settings.logs_path.is_relative_to(local_scratch())


def test_tracking_on_a_cluster_is_the_workspace_server_never_a_file(monkeypatch, tmp_path):
    """Issue 18, item 3: no sqlite file on a Volume; the workspace's server and Unity
    Catalog's registry, or what the cluster's environment names."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    settings = load_settings(overrides={"home": str(tmp_path)})
    assert settings.tracking_uri.startswith("sqlite:")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert (settings.tracking_uri, settings.registry_uri) == ("databricks", "databricks-uc")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    explicit = load_settings(overrides={"mlflow": {"tracking_uri": "http://x:1"}})
    assert explicit.tracking_uri == explicit.registry_uri == "http://x:1"


def test_workers_get_the_tracking_server_from_their_environment(monkeypatch, tmp_path):
    """Issue 18, item 3: tuning trials and Horovod ranks are given the URIs (and on
    Databricks the host and a token) instead of inheriting a path of the driver."""
    from lookalike.tracking import tracking_environment

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:5000")
    env = tracking_environment(load_settings(overrides={"home": str(tmp_path)}))
    assert env == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                   "MLFLOW_REGISTRY_URI": "http://127.0.0.1:5000"}


def test_keras_2_is_chosen_where_tensorflow_would_load_keras_3(monkeypatch):
    """DBR 15.4 LTS ML's TensorFlow 2.16 loads Keras 3 unless TF_USE_LEGACY_KERAS; TF
    Similarity needs Keras 2 (the runtime's tf-keras). TF 2.15 (here) needs nothing."""
    import importlib.metadata

    from lookalike.runtime import prefer_keras_2

    env: dict = {}
    assert prefer_keras_2(env) is False and env == {}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.16.1")
    assert prefer_keras_2(env) is True and env == {"TF_USE_LEGACY_KERAS": "1"}


def test_tensorflow_runs_its_onednn_kernels_unless_told_not_to(monkeypatch):
    """TensorFlow turns oneDNN on by itself only on AVX512-VNNI/-BF16/AMX CPUs; Lookalike on
    every CPU (about 2 x on AVX2-only ones), and a user's TF_ENABLE_ONEDNN_OPTS=0 wins."""
    from lookalike.runtime import ONEDNN_ENV, prefer_onednn, tensorflow_environment

    env: dict = {}
    assert prefer_onednn(env) is True and env == {ONEDNN_ENV: "1"}
    off = {ONEDNN_ENV: "0"}
    assert prefer_onednn(off) is False and off == {ONEDNN_ENV: "0"}
    empty = {ONEDNN_ENV: ""}  # set but empty: nobody decided
    assert prefer_onednn(empty) is True and empty == {ONEDNN_ENV: "1"}
    # What a tuning trial on another node is given: the driver's choice, not a new default.
    monkeypatch.setenv(ONEDNN_ENV, "0")
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    assert tensorflow_environment() == {ONEDNN_ENV: "0"}


def test_the_command_loads_tensorflow_with_onednn(tmp_path):
    """The `lookalike` command sets the switch before anything imports TensorFlow, and
    TensorFlow honours it (its own report, in a fresh process without the variable)."""
    import os
    import subprocess
    import sys

    # TensorFlow's kernels take the switch when TensorFlow is imported, so it must not be
    # imported before main() sets it.
    code = ("import os, sys\n"
            "from lookalike.cli import main\n"
            "assert 'tensorflow' not in sys.modules\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules\n"
            "assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == '1'\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print('onednn', _pywrap_util_port.IsMklEnabled())\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "onednn True"
