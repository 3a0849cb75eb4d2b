"""Console output: library noise goes to the log file, progress and the JSON line stay."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from lookalike.console import LineRouter


def test_native_and_library_noise_go_to_the_log_file(tmp_path):
    """TensorFlow's CUDA registration errors and nmslib's SSE banner (tensorflow-similarity
    imports both) must not reach the terminal; our progress line and JSON line must."""
    script = ("import json, sys\n"
              "from lookalike.console import quiet_libraries, say\n"
              f"path = quiet_libraries({str(tmp_path)!r})\n"
              "import tensorflow_similarity.samplers\n"
              "import mlflow, logging\n"
              "logging.getLogger('mlflow.store').info('Creating initial MLflow database tables')\n"
              "say('step', 'one progress line')\n"
              "print(json.dumps({'log': str(path)}))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "LOOKALIKE_VERBOSE")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
    assert done.stderr == "[step] one progress line\n"
    assert done.stdout.strip() == '{"log": "%s"}' % (tmp_path / "lookalike.log")
    assert "SSE" in (tmp_path / "lookalike.log").read_text()  # nmslib's banner, kept


def test_line_router_keeps_progress_lines_only():
    keep, rest = io.StringIO(), io.StringIO()
    router = LineRouter("[train]", keep, rest)
    router.write("noise 1\n[train] epoch 1/2: loss 0.5\nno")
    router.write("ise 2\n  [train] epoch 2/2\n")
    assert keep.getvalue() == "[train] epoch 1/2: loss 0.5\n  [train] epoch 2/2\n"
    assert rest.getvalue() == "noise 1\nnoise 2\n"


def test_timed_says_one_line_with_the_seconds_when_the_block_ends(capsys):
    from lookalike.console import timed

    with timed("evaluate", "catalogue: 3 images embedded"):
        assert capsys.readouterr().err == ""  # nothing before the work is done
    line = capsys.readouterr().err
    assert line.startswith("[evaluate] catalogue: 3 images embedded in ") and line.endswith("s\n")
