"""Small helpers for the entry points, one job per module."""
