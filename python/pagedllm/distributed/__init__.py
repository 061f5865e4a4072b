"""Tensor parallelism: process groups, the per-step plan broadcast, and the multi-process executor."""
