"""The Prometheus registry of one app: API latency, the store's numbers, the process (docs/observability.md).

Each app gets its own registry instead of prometheus_client's global one, so tests that build several
apps in one process never see each other's samples.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
)
from prometheus_client.exposition import choose_encoder

from scaleset.observability.store_metrics import StoreCollector
from scaleset.store.db import Database

# Methods the API serves; anything else is counted as OTHER, so a client inventing methods cannot grow
# the number of series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"})
# Requests that match no route (404s): their paths are whatever a client typed, so they share one label.
UNMATCHED_ROUTE = "unmatched"


class Metrics:
    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry()
        # The process's CPU, memory, open files and start time; the Python version; GC counts.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.requests = Histogram(
            "scaleset_api_request_duration_seconds",
            "API requests: time from receiving the request to having sent the whole response, by method, "
            "route template (not the raw path) and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(db))

    def observe_request(self, method: str, route: str | None, status: int, seconds: float) -> None:
        method = method.upper()
        self.requests.labels(
            method if method in KNOWN_METHODS else "OTHER", route or UNMATCHED_ROUTE, str(status)
        ).observe(seconds)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The samples and their content type, in the format the scraper's Accept header asks for: the
        classic text format (0.0.4) by default, OpenMetrics when asked for."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
