"""Prometheus metrics, one registry per server so tests can run several servers in a process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("fr_deliveries_received", "Webhook deliveries accepted", ["event"], registry=r)
        self.done = Counter("fr_deliveries_done", "Deliveries handled", ["event"], registry=r)
        self.failed = Counter("fr_deliveries_failed", "Deliveries parked as failed", ["event"], registry=r)
        self.rejected = Counter("fr_deliveries_rejected", "Deliveries refused", ["reason"], registry=r)
        self.queue_depth = Gauge("fr_queue_depth", "Pending deliveries", registry=r)
        self.handler_latency = Histogram(
            "fr_handler_seconds", "Time to handle one delivery", ["event"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.api_calls = Counter("fr_github_api_calls", "GitHub API calls", ["method", "status"], registry=r)
        self.rate_remaining = Gauge("fr_github_rate_limit_remaining", "Last seen x-ratelimit-remaining",
                                    ["installation"], registry=r)
        self.model_calls = Counter("fr_model_calls", "Model calls", ["tier"], registry=r)
        self.model_latency = Histogram("fr_model_seconds", "Model call latency", ["tier"], registry=r,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.escalations = Counter("fr_escalations", "Escalations to the fallback model", ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# A default instance for code paths that run outside a server (CLI).
DEFAULT = Metrics()
