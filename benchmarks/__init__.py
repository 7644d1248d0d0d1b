"""Benchmark scripts: each prints ratios measured in one run (GUIDE section 10)."""
