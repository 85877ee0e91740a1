"""Benchmark scripts (run directly, not collected by pytest); see README.md in this folder."""
