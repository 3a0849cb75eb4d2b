"""Fixtures of the learning tests: one small catalogue shared by the data, training-loop and
training tests."""

from __future__ import annotations

import uuid

import pytest

ITEMS_PER_SPLIT = 200


@pytest.fixture(scope="session")
def catalogue(training_settings, spark):
    """A small Fashion-MNIST catalogue of its own, with the data prepared for the memory path."""
    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.learning.data import prepare_training_data

    settings = training_settings.replace(catalogue={"database": f"tr{uuid.uuid4().hex[:8]}"})
    ingest_fashion_mnist(spark, settings, limit_per_split=ITEMS_PER_SPLIT)
    return settings, prepare_training_data(spark, settings, mode="memory")
