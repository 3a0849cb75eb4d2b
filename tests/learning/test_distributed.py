"""The training loop: checkpoints and resume, two real Horovod ranks on Spark."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_resume_from_checkpoint_continues_at_the_next_epoch(catalogue, tmp_path):
    import dataclasses

    from lookalike.learning.distributed import read_state, train_embedding

    settings, spec = catalogue
    short = settings.replace(training={"steps_per_epoch": 5, "epochs": 1})
    first = train_embedding(dataclasses.asdict(short), spec.to_dict(), str(tmp_path))
    assert first["initial_epoch"] == 0 and read_state(tmp_path)["epoch"] == 1
    longer = short.replace(training={"epochs": 2})
    second = train_embedding(dataclasses.asdict(longer), spec.to_dict(), str(tmp_path))
    assert second["initial_epoch"] == 1 and len(second["history"]["loss"]) == 1
    assert read_state(tmp_path)["epoch"] == 2
    # Resumed from the epoch-1 weights, not from scratch.
    assert second["probe_loss_before"] == pytest.approx(first["probe_loss_after"], rel=1e-4)


def test_proxy_term_trains_resumes_and_exports_through_the_one_loop(catalogue, tmp_path):
    """model.proxy_weight through train_embedding: the proxies are sized by the spec's label
    ids, restored on resume, and the exported model is the same embedding network."""
    import dataclasses

    from lookalike.learning.data import label_count
    from lookalike.learning.distributed import train_embedding
    from lookalike.learning.model import PROXIES_LAYER, load_embedding_model
    from lookalike.learning.training import save_trained

    settings, spec = catalogue
    proxy = settings.replace(training={"steps_per_epoch": 4, "epochs": 1},
                             model={"proxy_weight": 1.0})
    first = train_embedding(dataclasses.asdict(proxy), spec.to_dict(), str(tmp_path / "c"),
                            keep_model=True)
    assert first["model"].get_layer(PROXIES_LAYER).proxies.shape[0] == label_count(spec)
    assert np.isfinite(first["history"]["loss"]).all()
    second = train_embedding(dataclasses.asdict(proxy.replace(training={"epochs": 2})),
                             spec.to_dict(), str(tmp_path / "c"))
    assert second["probe_loss_before"] == pytest.approx(first["probe_loss_after"], rel=1e-4)
    # Resuming on another label list (a changed catalogue) is refused, not silently mixed.
    other = dataclasses.replace(spec, categories=tuple(reversed(spec.categories)))
    with pytest.raises(ValueError, match="other labels"):
        train_embedding(dataclasses.asdict(proxy.replace(training={"epochs": 3})),
                        other.to_dict(), str(tmp_path / "c"))
    saved = save_trained(proxy, spec, second["weights_path"], tmp_path / "model", "run")
    vectors = load_embedding_model(saved).embed(
        np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32))
    assert vectors.shape[0] == 3 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)


def _lite_fine_tune(catalogue, tmp_path, **training):
    """Lite0 at 32 px fine-tuned for 2 short epochs (1 of warm-up) with ``training`` settings:
    (settings, data spec, train_embedding's result, a fresh model built the same way)."""
    import dataclasses

    from lookalike.learning.distributed import _built_model, train_embedding

    settings, spec = catalogue
    lite = settings.replace(image={"size": 32, "channels": 3},
                            model={"backbone": "efficientnet_lite0",
                                   "pretrained_weights": "imagenet"},
                            training={"epochs": 2, "steps_per_epoch": 2, "warmup_epochs": 1,
                                      "learning_rate": 0.01, **training},
                            tuning={"epochs": 2})
    colour = dataclasses.replace(spec, image_shape=(32, 32, 3))
    result = train_embedding(dataclasses.asdict(lite), colour.to_dict(), str(tmp_path))
    return lite, colour, result, _built_model(lite, colour)


def test_finetune_blend_saves_the_point_between_pretrained_and_trained(catalogue, tmp_path):
    """training.finetune_blend (WiSE-FT): the final weights' backbone is pretrained + share x
    (trained - pretrained), the epoch checkpoint keeps the trained weights, the head is as
    trained."""
    import dataclasses

    from lookalike.learning.distributed import read_state, train_embedding
    from lookalike.learning.model import backbone_of

    lite, colour, result, model = _lite_fine_tune(catalogue, tmp_path, finetune_blend=0.25)

    def weights(path=None):
        if path:
            model.load_weights(str(path)).expect_partial()
        head = [w.numpy() for w in model.trainable_weights
                if not any(w is b for b in backbone_of(model).weights)]
        return backbone_of(model).get_weights(), head

    pretrained, _ = weights()
    trained, trained_head = weights(tmp_path / read_state(tmp_path)["weights"])
    final, final_head = weights(result["weights_path"])
    moved = [i for i, (p, t) in enumerate(zip(pretrained, trained)) if not np.allclose(p, t)]
    assert len(moved) > len(pretrained) // 4          # fine-tuning changed the backbone
    for p, t, f in zip(pretrained, trained, final):
        np.testing.assert_allclose(f, p + 0.25 * (t - p), rtol=1e-5, atol=1e-6)
    for t, f in zip(trained_head, final_head):
        np.testing.assert_array_equal(t, f)
    # A rerun on the finished folder blends from the pretrained weights again, not from the
    # checkpoint it loads (the snapshot is taken before any checkpoint loads).
    again = train_embedding(dataclasses.asdict(lite), colour.to_dict(), str(tmp_path))
    for f, r in zip(final, weights(again["weights_path"])[0]):
        np.testing.assert_allclose(r, f, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_horovod_ranks_average_gradients(catalogue, spark, tmp_path):
    from lookalike.learning.distributed import run_training

    settings, spec = catalogue
    run = settings.replace(training={"epochs": 2, "steps_per_epoch": 8})
    results = run_training(run, spec, tmp_path, processes=2, return_weights=True, spark=spark)
    assert [r["rank"] for r in results] == [0, 1] and {r["size"] for r in results} == {2}
    # Each rank trained on its own shard ...
    assert results[0]["shard_digest"] != results[1]["shard_digest"]
    # ... yet the trainable weights are identical: gradients were all-reduced every step.
    for w0, w1 in zip(results[0]["trainable_weights"], results[1]["trainable_weights"]):
        np.testing.assert_allclose(np.asarray(w0), np.asarray(w1), atol=1e-5)
    for r in results:
        assert r["probe_loss_after"] < r["probe_loss_before"]
    assert "weights_path" in results[0] and "weights_path" not in results[1]
    # The epoch's 8 steps are split: each rank ran 4 per epoch, not all 8.
    batch = settings.training.classes_per_batch * settings.training.examples_per_class
    assert [r["images"] for r in results] == [2 * 4 * batch] * 2
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2


def test_finetune_depth_trains_only_the_top_of_the_backbone(catalogue, tmp_path):
    """training.finetune_depth 0.5: after warm-up the top half of the backbone's weight layers
    fine-tunes; every layer below keeps its pretrained weights (BatchNorm statistics too)."""
    from lookalike.learning.model import _sublayers, backbone_of, frozen_below

    _, _, result, model = _lite_fine_tune(catalogue, tmp_path, finetune_depth=0.5)
    leaves = [layer for layer in _sublayers(backbone_of(model))
              if not getattr(layer, "layers", None)]
    cut = frozen_below(leaves, 0.5)
    assert 0 < cut < len(leaves) and frozen_below(leaves, 1.0) == 0
    pretrained = [layer.get_weights() for layer in leaves]
    model.load_weights(result["weights_path"]).expect_partial()
    trained = [layer.get_weights() for layer in leaves]
    moved = [i for i, (p, t) in enumerate(zip(pretrained, trained))
             if any(not np.array_equal(a, b) for a, b in zip(p, t))]
    assert moved and min(moved) >= cut                # only layers above the cut moved ...
    assert len(moved) > (len(leaves) - cut) // 4      # ... and many of them did


def test_an_epoch_is_split_across_ranks():
    from lookalike.learning.distributed import rank_steps

    assert [rank_steps(500, n) for n in (1, 2, 3, 4)] == [500, 250, 167, 125]
    assert rank_steps(1, 8) == 1


def test_fine_tuning_phases_freeze_then_unfreeze_at_a_lower_rate(base_settings):
    from lookalike.learning.distributed import training_phases
    from lookalike.learning.model import backbone_of, build_model, set_backbone_trainable

    plain = base_settings.training
    assert training_phases(plain) == [(0, plain.epochs, True, 1.0)]
    recipe = base_settings.replace(training={"epochs": 5, "warmup_epochs": 2,
                                             "finetune_lr_scale": 0.1,
                                             "freeze_batchnorm": True}).training
    assert training_phases(recipe) == [(0, 2, False, 1.0), (2, 5, True, 0.1)]

    model = build_model(base_settings)
    # The head: projection (Dense, BatchNorm) and MetricEmbedding.
    head = sum(len(layer.trainable_weights) for layer in model.layers
               if layer is not backbone_of(model))
    assert head == 5
    set_backbone_trainable(model, False, True)
    assert len(model.trainable_weights) == head                 # only the head learns
    set_backbone_trainable(model, True, False)
    everything = len(model.trainable_weights)
    set_backbone_trainable(model, True, True)
    batchnorm = [layer for layer in model.get_layer("compact_cnn").layers
                 if type(layer).__name__ == "BatchNormalization"]
    assert batchnorm and all(not layer.trainable for layer in batchnorm)
    assert head < len(model.trainable_weights) == everything - 2 * len(batchnorm)


@pytest.mark.parametrize("precision", ["mixed_float16"])
def test_mixed_precision_trains_and_the_exported_model_stays_float32(catalogue, tmp_path,
                                                                     precision):
    """float16 / bfloat16 compute while training (what GPUs' tensor cores run), float32
    weights, a loss that falls, and a float32 model for CPU serving afterwards."""
    import dataclasses

    import tensorflow as tf

    from lookalike.learning.distributed import _built_model, train_embedding
    from lookalike.learning.training import save_trained

    settings, spec = catalogue
    mixed = settings.replace(training={"steps_per_epoch": 6, "epochs": 1,
                                       "precision": precision})
    model = _built_model(mixed, spec)
    compute = {layer.compute_dtype for layer in model.layers if layer.trainable_weights}
    assert precision.removeprefix("mixed_") in compute
    assert model.outputs[0].dtype == tf.float32
    assert {w.dtype for w in model.trainable_weights} == {tf.float32}
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored
    result = train_embedding(dataclasses.asdict(mixed), spec.to_dict(), str(tmp_path / "ckpt"))
    assert np.isfinite(result["history"]["loss"]).all()
    assert result["probe_loss_after"] < result["probe_loss_before"]
    saved = save_trained(mixed, spec, result["weights_path"], tmp_path / "model", "run")
    from lookalike.learning.model import load_embedding_model

    images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    exact = load_embedding_model(saved).embed(images)
    assert exact.dtype == np.float32 and np.allclose(np.linalg.norm(exact, axis=1), 1, atol=1e-3)
    # The mixed export (GPU batch embedding) gives the same directions, to its precision.
    mixed_vectors = load_embedding_model(saved, precision="mixed").embed(images)
    assert mixed_vectors.dtype == np.float32
    assert np.min(np.sum(exact * mixed_vectors, axis=1)) > 0.98


def test_gpu_task_slots_bound_horovod_processes():
    """Issue 18, item 5: with spark.task.resource.gpu.amount 1, a one-GPU-worker cluster has
    one task slot, whatever its cores; the guard counts GPUs, not cores."""
    from lookalike.learning.distributed import gpu_task_slots

    assert gpu_task_slots(executors=1, gpus_per_executor=1, gpus_per_task=1) == 1
    assert gpu_task_slots(executors=2, gpus_per_executor=4, gpus_per_task=1) == 8
    assert gpu_task_slots(executors=2, gpus_per_executor=1, gpus_per_task=0.5) == 4


def test_a_sampler_is_fed_to_fit_as_the_same_batches_without_autotuning():
    """Issue 22: Keras' own wrapping of a Sequence autotunes, and its tuning thread held tuning
    trials for ~35 s at the end of fit. The replacement yields the sampler's batches, in order,
    epoch after epoch, with autotuning off; a tf.data pipeline passes through unchanged."""
    import tensorflow as tf

    from lookalike.learning.distributed import _sequence_dataset

    class Batches:  # a Sequence's protocol, as MultiShotMemorySampler has it
        calls = 0

        def __len__(self):
            return 3

        def __getitem__(self, i):
            Batches.calls += 1
            return (np.full((4, 2, 2, 1), Batches.calls, np.float32),
                    np.arange(4, dtype=np.int32) + Batches.calls)

    x, y = Batches()[0]
    dataset = _sequence_dataset(Batches(), x, y)
    assert dataset.options().autotune.enabled is False
    seen = [(int(bx[0, 0, 0, 0]), by.numpy().tolist()) for bx, by in dataset.take(7)]
    assert [s[0] for s in seen] == list(range(2, 9))  # 7 draws, more than one pass of 3
    assert seen[0][1] == [2, 3, 4, 5] and seen[0][1][0] == seen[0][0]
    stream = tf.data.Dataset.range(3)
    assert _sequence_dataset(stream, x, y) is stream
