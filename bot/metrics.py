"""Prometheus metrics, one registry per server so tests can run several servers in a process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample


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

    def render(self, public: bool = False) -> bytes:
        """Prometheus text; ``public`` leaves out every series labelled by installation or repository."""
        return generate_latest(_Public(self.registry) if public else self.registry)


# Labels that name a customer: the public /metrics answer must not carry them (issue #11 item 7).
PRIVATE_LABELS = frozenset({"installation", "installation_id", "repo", "repository"})


class _Public:
    """A view of a registry without per-installation/per-repository series. A gauge keeps one
    unlabelled sample, the lowest value (for the rate limit: the installation closest to running out)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        for metric in self.registry.collect():
            kept = [s for s in metric.samples if not PRIVATE_LABELS & s.labels.keys()]
            if len(kept) == len(metric.samples):
                yield metric
                continue
            folded = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            folded.samples = kept
            hidden = [s for s in metric.samples if PRIVATE_LABELS & s.labels.keys()]
            if metric.type == "gauge" and hidden and not kept:
                lowest = min(hidden, key=lambda s: s.value)
                folded.samples = [Sample(lowest.name, {}, lowest.value, None, None)]
            yield folded


# A default instance for code paths that run outside a server (CLI).
DEFAULT = Metrics()
