"""Inference engines for a saved embedding model: TensorFlow itself, or TensorFlow Lite.

The REST server embeds one or a few images per request, where TensorFlow's per-call overhead
dominates: the same network converted to TensorFlow Lite (XNNPACK kernels) answers in less than
half the time on CPU (docs/benchmarks-history.md), with outputs equal to within 1e-6. Batch jobs
and GPUs keep TensorFlow. The conversion happens once per training run, when it is first
packaged (:func:`lookalike.learning.artifacts.convert_once` keeps it beside the downloaded
model, where the nightly repackaging of the same run finds it). The packaged model carries it
(``CONVERTED_FILE`` in its embedding model folder), so a serving worker, the validation and the
nightly recommendations only read it (converting EfficientNet-Lite0 takes about 5 s of CPU). A
model without the file (packaged before it existed) is converted when it loads. If conversion
fails (an op TFLite lacks), TensorFlow is used and the reason logged.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ENGINES = ("tensorflow", "tflite")
# The converted model, beside the SavedModel it was converted from.
CONVERTED_FILE = "embedding.tflite"


def convert(saved_model_dir: str | Path) -> bytes:
    """The TensorFlow Lite flatbuffer of a SavedModel."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir)).convert()


class TfliteRunner:
    """A converted SavedModel; one interpreter per calling thread (interpreters are not
    thread-safe, and the scoring server runs requests in a thread pool)."""

    def __init__(self, model_content: bytes, threads: int = 1):
        self.model_content = model_content
        self.threads = max(1, int(threads))
        self._local = threading.local()

    def _interpreter(self, batch: int, shape: tuple[int, ...]):
        import tensorflow as tf

        state = getattr(self._local, "state", None)
        if state is None:
            interpreter = tf.lite.Interpreter(model_content=self.model_content,
                                              num_threads=self.threads)
            state = self._local.state = {"interpreter": interpreter, "batch": None}
        interpreter = state["interpreter"]
        if state["batch"] != batch:
            detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(detail["index"], [batch, *shape])
            interpreter.allocate_tensors()
            state["batch"] = batch
        return interpreter

    def embed(self, images: np.ndarray) -> np.ndarray:
        interpreter = self._interpreter(len(images), images.shape[1:])
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def tflite_or_none(saved_model_dir: str | Path, threads: int,
                   converted: str | Path | None = None) -> TfliteRunner | None:
    """The TFLite runner of ``converted`` (a file written from :func:`convert`) when it exists,
    else of the SavedModel converted now; None (TensorFlow stays in use) if it does not
    convert."""
    if converted is not None and Path(converted).is_file():
        return TfliteRunner(Path(converted).read_bytes(), threads)
    try:
        return TfliteRunner(convert(saved_model_dir), threads)
    except Exception as error:  # noqa: BLE001 - any converter failure: fall back, say why
        log.warning("TensorFlow Lite conversion of %s failed (%s): serving with TensorFlow",
                    saved_model_dir, error)
        return None
