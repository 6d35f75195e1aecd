"""Cunxiang's HTTP side: the REST API under /api/v1, /healthz and /metrics."""
