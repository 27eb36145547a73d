"""Benchmarks of the workers: scripts run with ``python -m bench.NAME``."""
