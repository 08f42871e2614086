"""Benchmarks: `make bench` writes bench/results/latest.json and latest.md (see bench/run.py)."""
