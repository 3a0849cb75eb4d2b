"""The pipeline and the demo, built on a small step engine.

* :mod:`.engine` -- steps with input fingerprints, skipped when nothing changed;
* :mod:`.steps` -- ingest -> tune -> train -> evaluate -> embed -> build-index -> package ->
  promote, and :func:`~lookalike.pipeline.steps.run_pipeline`;
* :mod:`.sample` -- the catalogue sample the demo app browses;
* :mod:`.demo` -- ``lookalike demo``: pipeline, REST server and Streamlit app.
"""
