"""Benchmarks: ``python -m benchmarks.<name>``; figures in BENCHMARKS.md."""

from lookalike.runtime import prefer_onednn

# Measure TensorFlow as the `lookalike` command runs it (its oneDNN kernels; lookalike.cli).
prefer_onednn()
