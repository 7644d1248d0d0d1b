"""Benchmark scripts: each prints ratios measured in one run (docs/measurement.md)."""
