"""The collector's Prometheus metrics: record counters, run-write counters and a request
latency histogram per route. One registry per app, so several apps (tests) never share
counters; each collector process exposes its own (scrape every replica)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from ..storage._keys import PROJECT_TAG

__all__ = ["Metrics", "MetricsMiddleware", "UsageTotals", "CONTENT_TYPE_LATEST"]

log = logging.getLogger("usageledger.server")

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

    def render(self, usage: UsageTotals | None = None) -> bytes:
        """The process's own metrics, plus the stored usage totals when given."""
        text = generate_latest(self.registry)
        if usage is not None:
            text += generate_latest(usage.registry)
        return text

    def record_counts(self) -> dict[str, float]:
        """This process's record counters by result (for the dashboard's delivery view)."""
        return {name: counter._value.get() for name, counter in (
            ("received", self.received), ("accepted", self.accepted),
            ("duplicates", self.duplicates), ("rejected", self.rejected))}


_TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")


class UsageTotals:
    """Tokens and cost by provider and model, read from storage at scrape time.

    The figures are the storage's exact totals (every replica answers the same, so scrape
    one), and labels stay bounded: the ``top_n`` provider/model pairs by tokens keep their
    own labels, the rest are summed under ``provider="other", model="other"``. Reading them
    is one aggregate over the rollups, a few milliseconds at 10^6 records."""

    def __init__(self, store: Any, top_n: int = 20, project: str | None = None):
        self.store = store
        self.top_n = top_n
        #: only this project's records (the tag the collector puts on them), or every record
        self.filters: dict[str, Any] = {} if project is None else {"tags": {PROJECT_TAG: project}}
        # a registry of its own: these totals are stored data, shown only to a caller with
        # a key (or a loopback caller of a keyless collector), unlike the process metrics
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily("usageledger_tokens", "", labels=["provider", "model", "type"]),
                CounterMetricFamily("usageledger_cost", "", labels=["provider", "model", "currency"])]

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "usageledger_tokens", "Stored tokens by provider, model and token type "
            "(top pairs by tokens, the rest as other)", labels=["provider", "model", "type"])
        cost = CounterMetricFamily(
            "usageledger_cost", "Stored cost by provider, model and currency "
            "(top pairs by tokens, the rest as other)", labels=["provider", "model", "currency"])
        try:
            rows = self.store.aggregate(("provider", "model"), **self.filters)
        except Exception as exc:  # a scrape must still answer the process's own metrics
            log.warning("usage totals for /metrics unavailable: %r", exc)
            rows = []
        pairs: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            p = pairs.setdefault((r["provider"], r["model"]), {"costs": {}, "tokens": dict.fromkeys(_TOKEN_KINDS, 0)})
            for kind in _TOKEN_KINDS:
                p["tokens"][kind] += r[f"{kind}_tokens"]
            cur = r.get("currency") or "USD"
            p["costs"][cur] = p["costs"].get(cur, Decimal(0)) + r["cost"]
        ranked = sorted(pairs, key=lambda k: (-sum(pairs[k]["tokens"].values()), k))
        shown: dict[tuple[str, str], dict[str, Any]] = {k: pairs[k] for k in ranked[:self.top_n]}
        if len(ranked) > self.top_n:
            other: dict[str, Any] = {"costs": {}, "tokens": dict.fromkeys(_TOKEN_KINDS, 0)}
            for k in ranked[self.top_n:]:
                for kind, n in pairs[k]["tokens"].items():
                    other["tokens"][kind] += n
                for cur, v in pairs[k]["costs"].items():
                    other["costs"][cur] = other["costs"].get(cur, Decimal(0)) + v
            shown[("other", "other")] = other
        for (provider, model), p in shown.items():
            for kind, n in p["tokens"].items():
                tokens.add_metric([provider, model, kind], n)
            for cur, v in p["costs"].items():
                cost.add_metric([provider, model, cur], float(v))
        yield tokens
        yield cost


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
            # path_format: "/runs/{run_id}" also for a "{run_id:path}" route
            label = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
            self.metrics.requests.labels(label, method, str(status)).inc()
