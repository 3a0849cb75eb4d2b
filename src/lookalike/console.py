"""What a person sees in the terminal: one progress line per step, progress bars on long work,
and library noise (TensorFlow's CUDA/cuDNN start-up errors, nmslib's "not compiled with SSE"
banner, tensorflow-similarity's sampler bars, Spark and MLflow logs) in a log file instead.

:func:`quiet_libraries` (run by the ``lookalike`` command unless ``LOOKALIKE_VERBOSE=1``) points
the process's file descriptors 1 and 2 at ``LOOKALIKE_HOME/logs/lookalike.log``, so native
libraries and every child process (Spark JVM and Python workers, Horovod ranks) write there,
while Python's ``sys.stdout`` (the one JSON result line) and ``sys.stderr`` (progress, errors)
keep the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, TextIO

LOG_FILE_ENV = "LOOKALIKE_LOG_FILE"
VERBOSE_ENV = "LOOKALIKE_VERBOSE"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def say(tag: str, message: str) -> None:
    """One progress line on the terminal: ``[tag] message``."""
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(tag: str, what: str) -> Iterator[None]:
    """Say ``[tag] what in N.Ns`` when the block ends: one line per part of a long step."""
    tic = time.perf_counter()
    yield
    say(tag, f"{what} in {time.perf_counter() - tic:.1f}s")


def quiet_environment(environ: dict | None = None) -> None:
    """Environment that keeps library chatter down in this process and its children."""
    environ = os.environ if environ is None else environ
    # 3 = fatal only: the CUDA plug-in "Unable to register cuDNN factory" errors are not errors.
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Library tqdm bars (tensorflow-similarity samplers) off by default; ours pass disable=None.
    environ.setdefault("TQDM_DISABLE", "1")
    environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


def quiet_libraries(log_dir: str | Path) -> Path | None:
    """Send native output, child processes and library logging to ``log_dir/lookalike.log``.

    Returns the log file, or None when ``LOOKALIKE_VERBOSE=1`` (everything stays on the
    terminal). Call once, early, from a command-line entry point (never from library code).
    """
    quiet_environment()
    if os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes"):
        return None
    # MLflow would otherwise add its own terminal handler when it is first imported.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    log_path = Path(log_dir) / "lookalike.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, name in ((1, "stdout"), (2, "stderr")):
        terminal = os.dup(fd)
        os.dup2(log_fd, fd)
        setattr(sys, name, io.TextIOWrapper(os.fdopen(terminal, "wb"), encoding="utf-8",
                                            errors="replace", line_buffering=True))
    os.close(log_fd)
    handler = logging.StreamHandler(open(log_path, "a", encoding="utf-8"))  # noqa: SIM115
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # MLflow, py4j and absl install their own terminal handlers; route them to the file too.
    for name in ("mlflow", "py4j", "absl", "tensorflow", "horovod", "hyperopt"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.captureWarnings(True)
    os.environ[LOG_FILE_ENV] = str(log_path)
    return log_path


class LineRouter(io.TextIOBase):
    """A text stream that sends lines starting with ``prefix`` to ``keep`` and others to
    ``rest``: Horovod forwards every rank's output, we keep only the progress lines."""

    def __init__(self, prefix: str, keep: TextIO, rest: TextIO):
        super().__init__()
        self.prefix, self.keep, self.rest = prefix, keep, rest
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            target = self.keep if line.lstrip().startswith(self.prefix) else self.rest
            target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.keep.flush()
        self.rest.flush()


def log_stream() -> TextIO:
    """Where library output should go: the log file when quiet, else the terminal."""
    path = os.environ.get(LOG_FILE_ENV)
    return open(path, "a", encoding="utf-8") if path else sys.stderr  # noqa: SIM115


@contextlib.contextmanager
def library_output() -> Iterator[TextIO]:
    """Where a library's own print()s go, for ``contextlib.redirect_stdout`` / ``_stderr``:
    the log file (the terminal when verbose)."""
    stream = log_stream()
    try:
        yield stream
    finally:
        if stream is not sys.stderr:
            stream.close()


def progress_bar(total: int | None, description: str, unit: str = "it"):
    """A tqdm bar on the terminal (off when stderr is not one, e.g. in CI logs)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, disable=None,
                leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def spark_progress(spark, description: str, poll_seconds: float = 0.5) -> Iterator[None]:
    """A progress bar of the Spark tasks run inside the block (completed / total tasks)."""
    tracker = spark.sparkContext.statusTracker()
    done = threading.Event()
    bar = progress_bar(None, description, unit="task")

    def poll() -> None:
        while not done.wait(poll_seconds):
            stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            stages = [s for s in stages if s is not None]
            if stages:
                bar.total = sum(s.numTasks for s in stages)
                bar.n = sum(s.numCompletedTasks for s in stages)
                bar.refresh()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()
