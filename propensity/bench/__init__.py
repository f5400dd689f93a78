"""Benchmarks: each runs real components and prints its figures."""
