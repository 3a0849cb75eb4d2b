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
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2
