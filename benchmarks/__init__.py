"""Benchmark scripts (``python -m benchmarks.NAME``): the top layer, free to use every package; results
in ``benchmarks/results/``."""
