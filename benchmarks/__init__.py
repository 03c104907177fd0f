"""Benchmarks for rkllm-sdk, run as ``python -m benchmarks [--json]``."""
