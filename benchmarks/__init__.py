"""Benchmarks: each module measures one target and writes benchmarks/results/<name>.json."""
