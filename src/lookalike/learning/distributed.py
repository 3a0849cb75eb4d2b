"""One training function for one process or many Horovod ranks.

:func:`train_embedding` is the only training loop. :func:`run_training` calls it in-process
(``processes == 1``) or through ``horovod.spark.run`` on ``processes`` Spark tasks, where each
rank:

* initialises Horovod, pins its GPU if there is one (never a hard-coded device), and limits
  TensorFlow's CPU thread pools to ``cores // ranks`` so ranks sharing a host do not
  oversubscribe it;
* trains on its own shard of the data (memory: rows ``permutation[rank::size]`` with a
  rank-dependent sampler seed; Petastorm: ``cur_shard=rank, shard_count=size``);
* compiles the model with the ``hvd.DistributedOptimizer``-wrapped optimizer itself, so the
  gradients applied are the all-reduced average; the learning rate is scaled by ``size``;
* starts from rank 0's weights (``BroadcastGlobalVariablesCallback(0)``) and averages logged
  metrics (``MetricAverageCallback``). Only rank 0 writes checkpoints, logs to MLflow and saves
  the final weights (with ``training.finetune_blend`` < 1, the backbone blended with its
  pretrained weights: :func:`lookalike.learning.model.blended_weights`).

Checkpoints (weights + optimizer state, TF format) go to ``checkpoint_dir/epoch-NNNN`` after
every epoch with ``checkpoint_dir/state.json`` naming the last complete one; a rerun with the
same ``checkpoint_dir`` resumes from it (``initial_epoch`` = epochs already done).

Everything handed to a rank is plain data (settings as a dict, the DataSpec as a dict), and
TensorFlow/Horovod are imported inside the function: ``horovod.spark.run`` cloudpickles it
into Spark Python workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
FINAL_WEIGHTS = "final/weights"


def read_state(checkpoint_dir: str | Path) -> dict | None:
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def train_embedding(settings_dict: dict, spec_dict: dict, checkpoint_dir: str,
                    use_horovod: bool = False, mlflow_run_id: str | None = None,
                    tracking_uri: str | None = None, return_weights: bool = False,
                    threads: int | None = None, keep_model: bool = False) -> dict:
    """Train the embedding model on this process's shard; see the module docstring.

    Returns a JSON-able dict: rank, size, initial_epoch, epochs, history (per-epoch mean loss),
    probe_loss_before/after (loss on a fixed batch of this rank's shard), shard_digest,
    images, seconds, weights_path (rank 0), and with ``return_weights`` the trainable weights.
    ``threads`` caps TensorFlow's intra-op pool (default: cores / local ranks); ``keep_model``
    (in-process callers only, e.g. tuning trials) adds the trained Keras model as ``"model"``.
    """
    import numpy as np

    from lookalike.config import settings_from_dict
    from lookalike.learning.data import DataSpec, batch_classes, training_batches
    from lookalike.learning.model import backbone_of, blended_weights, make_loss

    settings = settings_from_dict(settings_dict)
    spec = DataSpec.from_dict(spec_dict)
    rank, size, hvd = _init_process(use_horovod, threads)
    model = _built_model(settings, spec)
    t = settings.training
    # The pretrained backbone, before any checkpoint loads: finetune_blend's start point.
    pretrained = backbone_of(model).get_weights() if t.finetune_blend < 1.0 else None
    steps = rank_steps(t.steps_per_epoch, size)

    checkpoint_dir = Path(checkpoint_dir)
    state = read_state(checkpoint_dir)
    initial_epoch = 0
    labels = labels_digest(spec)
    if state is not None:
        # Class proxies (model.proxy_weight) belong to label ids: resuming on another label
        # list would load them for other classes, silently when their count is the same.
        if state.get("labels", labels) != labels:
            raise ValueError(f"{checkpoint_dir} was trained on other labels (the catalogue's "
                             "categories or products changed): start a new training run")
        model.load_weights(str(checkpoint_dir / state["weights"]))
        initial_epoch = int(state["epoch"])

    loss_fn = make_loss(settings, model)
    callbacks: list = []
    if hvd is not None:
        callbacks += [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                      hvd.callbacks.MetricAverageCallback()]
    if rank == 0:
        callbacks.append(_EpochCheckpoint(checkpoint_dir, labels))
        callbacks.append(_Progress(t.epochs, steps, bar=not use_horovod))
        if mlflow_run_id:
            callbacks.append(_MlflowEpochLogger(mlflow_run_id, tracking_uri))
    timer = _Timer()
    callbacks.append(timer)

    with training_batches(spec, settings, rank, size) as batches:
        probe_x, probe_y = _probe_batch(batches)
        digest = hashlib.sha256(np.asarray(probe_y).tobytes()
                                + np.asarray(probe_x)[:, ::7].tobytes()).hexdigest()[:16]
        before = _probe_loss(model, loss_fn, probe_x, probe_y)
        fit_input = _sequence_dataset(batches, probe_x, probe_y)
        history: dict[str, list[float]] = {}
        for start, end, backbone_trainable, lr_scale in training_phases(t):
            _compile_phase(model, settings, size, hvd, backbone_trainable, lr_scale,
                           decay_steps=(end - start) * steps)
            if end <= initial_epoch:
                continue
            fit = model.fit(fit_input, epochs=end, initial_epoch=max(start, initial_epoch),
                            steps_per_epoch=steps, callbacks=callbacks, verbose=0)
            for k, vs in fit.history.items():
                history.setdefault(k, []).extend(float(v) for v in vs)
        after = _probe_loss(model, loss_fn, probe_x, probe_y)
    if pretrained is not None:
        # Epoch checkpoints keep the trained weights (a resume continues from them); the
        # final weights, what is packaged and what tuning trials score, are the blend.
        backbone = backbone_of(model)
        backbone.set_weights(blended_weights(pretrained, backbone.get_weights(), t.finetune_blend))
        if rank == 0:
            print(f"[train] backbone saved as pretrained + {t.finetune_blend:g} x (trained - "
                  "pretrained) (training.finetune_blend)", file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "rank": rank, "size": size, "initial_epoch": initial_epoch, "epochs": t.epochs,
        "history": history, "probe_loss_before": before, "probe_loss_after": after,
        "shard_digest": digest,
        "images": timer.steps * batch_classes(spec, settings) * t.examples_per_class,
        "seconds": timer.seconds,
    }
    if rank == 0:
        final = checkpoint_dir / FINAL_WEIGHTS
        final.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(str(final))
        result["weights_path"] = str(final)
    if keep_model:
        result["model"] = model
    if return_weights:
        result["trainable_weights"] = [w.numpy().tolist() for w in model.trainable_weights]
    return result


def rank_steps(steps_per_epoch: int, size: int) -> int:
    """Steps each of ``size`` ranks runs per epoch: ``training.steps_per_epoch`` is the epoch's
    total, split across the ranks (N GPUs finish an epoch N times sooner). Each step's global
    batch is N x the per-rank batch, so the learning rate is scaled by N (linear scaling)."""
    return max(1, math.ceil(steps_per_epoch / max(1, size)))


def _init_process(use_horovod: bool, threads: int | None):
    """(rank, size, horovod module or None): Horovod started, CPU threads shared between the
    ranks of a host, this rank's GPU pinned (if any; never a hard-coded device)."""
    from lookalike.learning.model import configure_threads, gpu_memory_growth
    from lookalike.runtime import cpu_count

    rank, size, local_rank, local_size, hvd = 0, 1, 0, 1, None
    if use_horovod:
        import horovod.tensorflow.keras as hvd

        hvd.init()
        rank, size, local_rank, local_size = hvd.rank(), hvd.size(), hvd.local_rank(), \
            hvd.local_size()
    configure_threads(intra=threads or max(1, cpu_count() // max(1, local_size)), inter=2)

    import tensorflow as tf

    gpus = gpu_memory_growth()
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")
    return rank, size, hvd


def training_phases(t) -> list[tuple[int, int, bool, float]]:
    """(first epoch, end epoch, backbone trainable, learning-rate scale) of each phase: a
    pretrained backbone first stays frozen for ``warmup_epochs`` while the head learns, then
    everything fine-tunes at ``finetune_lr_scale`` of the learning rate."""
    if t.warmup_epochs <= 0:
        return [(0, t.epochs, True, 1.0)]
    phases = [(0, t.warmup_epochs, False, 1.0)]
    if t.epochs > t.warmup_epochs:
        phases.append((t.warmup_epochs, t.epochs, True, t.finetune_lr_scale))
    return phases


def _built_model(settings, spec):
    import tensorflow as tf

    from lookalike.learning.data import label_count
    from lookalike.learning.model import build_model, precision_policy

    tf.keras.utils.set_random_seed(settings.training.seed)  # same initial weights everywhere
    with precision_policy(settings.training.precision):
        return build_model(settings, num_classes=label_count(spec))


def _compile_phase(model, settings, size: int, hvd, backbone_trainable: bool, lr_scale: float,
                   decay_steps: int) -> None:
    """Freeze or unfreeze the backbone and compile with a fresh Adam (learning rate x scale x
    ranks, cosine decay over the phase if configured), wrapped in Horovod's
    DistributedOptimizer when ranks are in play."""
    import tensorflow as tf

    from lookalike.learning.model import compile_model, set_backbone_trainable

    t = settings.training
    set_backbone_trainable(model, backbone_trainable, t.freeze_batchnorm, t.finetune_depth)
    learning_rate: Any = t.learning_rate * lr_scale * size   # global batch = size x rank batch
    if t.cosine_decay:
        learning_rate = tf.keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, decay_steps), alpha=0.05)
    # Legacy Keras optimizers: what Horovod 0.28 supports on every TF 2.x release.
    optimizer = tf.keras.optimizers.legacy.Adam(learning_rate)
    if hvd is not None:
        optimizer = hvd.DistributedOptimizer(optimizer)
    compile_model(model, settings, optimizer)


def _probe_loss(model, loss_fn, x, y) -> float:
    """Loss on a fixed batch, BatchNorm using batch statistics (as in training), so it measures
    the trainable weights only; BN moving statistics are restored afterwards."""
    import tensorflow as tf

    saved = [v.numpy() for v in model.non_trainable_weights]
    value = float(loss_fn(tf.constant(y), model(x, training=True)))
    for variable, old in zip(model.non_trainable_weights, saved):
        variable.assign(old)
    return value


def _probe_batch(batches):
    """A fixed first batch of this rank's data (for the before/after loss check)."""
    import numpy as np

    if hasattr(batches, "__getitem__") and hasattr(batches, "__len__"):
        x, y = batches[0]
    else:
        x, y = next(iter(batches.take(1)))
    return np.asarray(x, dtype=np.float32), np.asarray(y)


def _sequence_dataset(batches, x, y):
    """A batch sampler (a Keras Sequence) as an endless tf.data pipeline without autotuning;
    a tf.data pipeline as it is.

    Keras wraps a Sequence in ``from_generator`` + ``prefetch(AUTOTUNE)``; at the end of
    ``fit`` that pipeline's autotuning thread held one tuning trial ~35 s (its native stack:
    waiting in the iterator's destructor; issue 22). The batches are the same: the
    sampler's, drawn in the same order.
    """
    import tensorflow as tf

    if not (hasattr(batches, "__getitem__") and hasattr(batches, "__len__")):
        return batches

    def endless():
        while True:
            for i in range(len(batches)):
                yield batches[i]

    signature = (tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                 tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)))
    options = tf.data.Options()
    options.autotune.enabled = False
    return (tf.data.Dataset.from_generator(endless, output_signature=signature).prefetch(1)
            .with_options(options))


def _callback_base():
    # Keras classes are created lazily so importing this module never imports TensorFlow.
    import tensorflow as tf

    return tf.keras.callbacks.Callback


def labels_digest(spec) -> str:
    """What a checkpoint's label ids mean: a digest of the label list training used."""
    from lookalike.learning.data import label_count

    names = spec.labels if spec.label_column == "group" else spec.categories
    raw = json.dumps([spec.label_column, label_count(spec), list(names)])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _EpochCheckpoint(directory: Path, labels: str):
    class EpochCheckpoint(_callback_base()):
        def on_epoch_end(self, epoch, logs=None):
            name = f"epoch-{epoch + 1:04d}/ckpt"
            directory.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(str(directory / name))
            tmp = directory / (STATE_FILE + ".tmp")
            tmp.write_text(json.dumps({"epoch": epoch + 1, "weights": name, "labels": labels,
                                       "saved_at": time.time()}), encoding="utf-8")
            os.replace(tmp, directory / STATE_FILE)

    return EpochCheckpoint()


def _MlflowEpochLogger(run_id: str, tracking_uri: str | None):
    class MlflowEpochLogger(_callback_base()):
        def on_train_begin(self, logs=None):
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                if key == "lr":
                    continue
                self.client.log_metric(run_id, f"train_{key}", float(value), step=epoch + 1)

    return MlflowEpochLogger()


def _Progress(epochs: int, steps: int, bar: bool):
    """One ``[train]`` line per epoch on stderr (Horovod forwards rank 0's), and in-process a
    progress bar over the epoch's steps."""

    class Progress(_callback_base()):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()
            self.bar = None
            if bar:
                from lookalike.console import progress_bar

                self.bar = progress_bar(steps, f"[train] epoch {epoch + 1}/{epochs}", "step")

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            if self.bar is not None:
                self.bar.close()
            loss = (logs or {}).get("loss", float("nan"))
            print(f"[train] epoch {epoch + 1}/{epochs}: loss {loss:.4f}, "
                  f"{time.perf_counter() - self.started:.1f}s", file=sys.stderr, flush=True)

    return Progress()


def _Timer():
    """Counts trained steps and their wall time (excludes model build and data set-up)."""

    class Timer(_callback_base()):
        def __init__(self):
            super().__init__()
            self.steps = 0
            self.seconds = 0.0
            self._start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            self.seconds += time.perf_counter() - self._start

    return Timer()


def task_slots(spark) -> int:
    """Spark tasks that can run at once: with ``spark.task.resource.gpu.amount`` set, GPUs
    bound them (executors x GPUs per executor / GPUs per task), else the cores."""
    sc = spark.sparkContext
    conf = sc.getConf()
    per_task = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
    if per_task <= 0:
        return int(sc.defaultParallelism)
    per_executor = float(conf.get("spark.executor.resource.gpu.amount", "1") or 1)
    # The driver counts as one entry of the memory status; local mode has only it.
    executors = max(1, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
    return gpu_task_slots(executors, per_executor, per_task)


def gpu_task_slots(executors: int, gpus_per_executor: float, gpus_per_task: float) -> int:
    return int(executors * (gpus_per_executor // gpus_per_task))


def run_training(settings, spec, checkpoint_dir: str | Path, processes: int = 1,
                 mlflow_run_id: str | None = None, tracking_uri: str | None = None,
                 return_weights: bool = False, spark=None) -> list[dict]:
    """Train with ``processes`` Horovod ranks via ``horovod.spark.run`` (1 = in this process).

    Returns the per-rank result dicts of :func:`train_embedding`, rank 0 first.
    """
    import dataclasses

    settings_dict = dataclasses.asdict(settings)
    spec_dict = spec.to_dict()
    kwargs = dict(checkpoint_dir=str(checkpoint_dir), mlflow_run_id=mlflow_run_id,
                  tracking_uri=tracking_uri, return_weights=return_weights)
    if processes <= 1:
        return [train_embedding(settings_dict, spec_dict, use_horovod=False, **kwargs)]

    import horovod.spark

    from lookalike.console import LineRouter, log_stream
    from lookalike.spark import get_spark
    from lookalike.tracking import tracking_environment

    spark = spark or get_spark(settings)
    slots = task_slots(spark)
    if processes > slots:
        raise ValueError(f"{processes} Horovod processes need {processes} concurrent Spark task "
                         f"slots; this cluster has {slots} (with spark.task.resource.gpu.amount, "
                         "one per GPU): pass --processes <= that")
    env = dict(os.environ)
    # Ranks on other nodes reach the tracking server through this (cluster: host + token).
    env.update(tracking_environment(settings))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONUNBUFFERED"] = "1"
    # Ranks' output comes back through Horovod: progress lines to the terminal, the rest to
    # the log file (lookalike.console).
    library_log = log_stream()
    run_kwargs: dict[str, Any] = dict(args=(settings_dict, spec_dict), kwargs={**kwargs,
                                      "use_horovod": True}, num_proc=processes, env=env,
                                      use_gloo=True, use_mpi=False, verbose=1,
                                      stdout=library_log,
                                      stderr=LineRouter("[train]", sys.stderr, library_log))
    master = spark.sparkContext.master or ""
    if master.startswith("local"):
        # All ranks are on this host: talk over loopback only.
        run_kwargs["nics"] = ["lo"]
    results = horovod.spark.run(train_embedding, **run_kwargs)
    return sorted(results, key=lambda r: r["rank"])
