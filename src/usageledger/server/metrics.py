"""The collector's Prometheus metrics: record counters, run-write counters and a request
latency histogram per route. One registry per app, so several apps (tests) never share
counters; each collector process exposes its own (scrape every replica)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "MetricsMiddleware", "CONTENT_TYPE_LATEST"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("usageledger_records_received", "Usage records received in /track bodies", registry=r)
        self.accepted = Counter("usageledger_records_accepted", "Usage records newly stored", registry=r)
        self.duplicates = Counter("usageledger_records_duplicate", "Usage records whose id was stored already", registry=r)
        self.rejected = Counter("usageledger_records_rejected", "Usage records refused by validation", registry=r)
        self.run_writes = Counter("usageledger_run_writes", "Agent-run writes by result", ["status"], registry=r)
        self.requests = Counter("usageledger_http_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "usageledger_http_request_duration_seconds", "Request latency by route",
            ["route", "method"], buckets=_BUCKETS, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (no per-request objects): times each HTTP request and labels it by the
    route template the router matched (``/api/v1/runs/{run_id}``), never the raw path, so
    label cardinality stays bounded."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
            self.metrics.requests.labels(label, method, str(status)).inc()
