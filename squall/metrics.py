"""Counters shared by all workers, Prometheus text, and the live status page (`--metrics`)."""

from __future__ import annotations

from squall.http.protocol import Metrics
from squall.supervisor import PluginBase


class MetricsPlugin(PluginBase):
    """In the supervisor: owns the shared counters and serves /metrics, /healthz, /readyz, /."""

    def __init__(self, address: str) -> None:
        raise NotImplementedError("--metrics is not implemented yet")


def worker_recorder() -> Metrics | None:
    """In a worker: the recorder writing to this worker's slot, or None without --metrics."""
    return None
