"""OtelMetricsSink: usage records as the OpenTelemetry GenAI token usage histogram.

``Pipeline(OtelMetricsSink(meter_provider), durability="memory")`` (or any journal)
turns every usage record into two measurements of ``gen_ai.client.token.usage``
(unit ``{token}``): one with ``gen_ai.token.type="input"`` (cache tokens included, the
GenAI convention) and one with ``"output"``, attributed with the provider and model
(:func:`usageledger.integrations.genai.metric_attributes`). The meter provider's readers
and exporters (OTLP, Prometheus, console...) take it from there.

Needs the ``otel`` extra (``pip install 'usageledger[otel]'``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..records import KIND_USAGE, decode_usage
from ..sinks.base import OK, Result, Sink, decode_batch
from .genai import (
    TOKEN_TYPE,
    TOKEN_USAGE_BUCKETS,
    TOKEN_USAGE_METRIC,
    metric_attributes,
    token_usage,
)

if TYPE_CHECKING:
    from ..journal.base import JournalItem

__all__ = ["OtelMetricsSink"]


def _metrics_api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ImportError(
            "OtelMetricsSink needs OpenTelemetry: pip install 'usageledger[otel]'"
        ) from exc
    return metrics


class OtelMetricsSink(Sink):
    """Record the token usage histogram for every usage record of a batch.

    ``meter_provider``: an OpenTelemetry ``MeterProvider`` (default: the global one).
    A histogram cannot take a measurement back, so the ids of the last
    ``dedup_window`` records are remembered and a redelivered record (after a lost
    acknowledgement) is not measured twice in this process. Items that are not usage
    records are rejected alone."""

    name = "otel-metrics"

    def __init__(self, meter_provider: Any = None, *, dedup_window: int = 10_000):
        metrics = _metrics_api()
        if meter_provider is None:
            meter_provider = metrics.get_meter_provider()
        if isinstance(dedup_window, bool) or not isinstance(dedup_window, int) or dedup_window < 0:
            raise ValueError(f"dedup_window must be an integer >= 0, got {dedup_window!r}")
        meter = meter_provider.get_meter("usageledger")
        self.histogram = meter.create_histogram(
            TOKEN_USAGE_METRIC,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(TOKEN_USAGE_BUCKETS),
        )
        self._dedup_window = dedup_window
        self._seen: OrderedDict[str, None] = OrderedDict()

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        decoded, results = decode_batch(
            batch, KIND_USAGE, decode_usage, taker="an OpenTelemetry metrics sink",
            noun="usage record",
        )
        record = self.histogram.record
        for id_, rec in decoded:
            if id_ not in self._seen:
                attrs = metric_attributes(rec)
                for token_type, tokens in token_usage(rec):
                    record(tokens, {**attrs, TOKEN_TYPE: token_type})
                self._remember(id_)
            results[id_] = OK
        return results

    def _remember(self, id_: str) -> None:
        if self._dedup_window:
            self._seen[id_] = None
            if len(self._seen) > self._dedup_window:
                self._seen.popitem(last=False)
