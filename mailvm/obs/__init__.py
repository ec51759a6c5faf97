"""Observability: Prometheus metrics and the per-message log line."""
