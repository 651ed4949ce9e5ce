"""Benchmark stage: targets, the per-layer latency table and the cost model the search uses."""
