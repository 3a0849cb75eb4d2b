"""The one SparkSession: local Delta jars, loopback only; the mapInPandas chunking helper."""

from __future__ import annotations

import pandas as pd

from lookalike.spark import chunks_with_model, default_jars_dir, delta_jars


def test_session_uses_local_delta_jars_and_stays_on_loopback(spark, base_settings):
    jars = delta_jars(base_settings)
    assert jars and all(j.startswith(str(default_jars_dir())) for j in jars)
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert "spark.jars.packages" not in dict(conf.getAll())  # no network at start
    assert spark.range(3).count() == 3


def test_chunks_with_model_loads_once_and_never_for_empty_batches():
    loads = []

    def load():
        loads.append(1)
        return "model"

    empty = pd.DataFrame({"x": []})
    assert list(chunks_with_model(iter([empty, empty]), load, 2)) == []
    assert loads == []
    frames = [empty, pd.DataFrame({"x": range(5)}), pd.DataFrame({"x": range(1)})]
    chunks = list(chunks_with_model(iter(frames), load, 2))
    assert loads == [1] and [len(c) for _, c in chunks] == [2, 2, 1, 1]
    assert {m for m, _ in chunks} == {"model"}
