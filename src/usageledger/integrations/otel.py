"""OpenTelemetry GenAI, both ways.

:class:`OtelMetricsSink`: ``Pipeline(OtelMetricsSink(meter_provider), durability="memory")``
(or any journal) turns every usage record into two measurements of
``gen_ai.client.token.usage`` (unit ``{token}``): one with ``gen_ai.token.type="input"``
(cache tokens included, the GenAI convention) and one with ``"output"``, and, for a record
that knows its latency (every captured call does), one of
``gen_ai.client.operation.duration`` (unit ``s``); all attributed with the operation,
provider and model (:func:`usageledger.integrations.genai.metric_attributes`). The meter
provider's readers and exporters (OTLP, Prometheus, console...) take it from there.

:class:`UsageSpanProcessor`: ``tracer_provider.add_span_processor(UsageSpanProcessor(meter))``
turns the ``gen_ai.*`` spans of any instrumentation library (OpenLLMetry, OpenTelemetry's
own instrumentations...) into usage records.

Needs the ``otel`` extra (``pip install 'usageledger[otel]'``).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..core.sink import OK, Result, Sink, decode_batch
from ..schema.records import KIND_USAGE, decode_usage
from ._common import recorder_for
from .genai import (
    LEGACY_SYSTEM,
    OPERATION_DURATION_BUCKETS,
    OPERATION_DURATION_METRIC,
    OPERATION_NAME,
    PROVIDER_NAME,
    TOKEN_TYPE,
    TOKEN_USAGE_BUCKETS,
    TOKEN_USAGE_METRIC,
    from_genai_attributes,
    has_token_usage,
    metric_attributes,
    operation_duration,
    token_usage,
)

if TYPE_CHECKING:
    from ..core.journal.base import JournalItem

__all__ = ["OtelMetricsSink", "UsageSpanProcessor"]

try:  # a real SpanProcessor when the SDK is there; the module imports without it
    from opentelemetry.sdk.trace import SpanProcessor as _SpanProcessorBase
except ImportError:  # pragma: no cover - the otel extra is part of dev
    _SpanProcessorBase = object  # type: ignore[assignment, misc]


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
        self.duration = meter.create_histogram(
            OPERATION_DURATION_METRIC,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(OPERATION_DURATION_BUCKETS),
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
                seconds = operation_duration(rec)
                if seconds is not None:
                    self.duration.record(seconds, attrs)
                self._remember(id_)
            results[id_] = OK
        return results

    def _remember(self, id_: str) -> None:
        if self._dedup_window:
            self._seen[id_] = None
            if len(self._seen) > self._dedup_window:
                self._seen.popitem(last=False)


#: operations whose spans sum up the calls made under them (counting them too would
#: count those calls twice)
AGGREGATE_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool",
                                  "invoke_workflow"})
#: span provider names -> the ``instrument()`` provider that captures the same calls
_CAPTURED_BY = {"openai": "openai", "azure.ai.openai": "openai", "azure": "openai",
                "anthropic": "anthropic"}


class UsageSpanProcessor(_SpanProcessorBase):  # type: ignore[misc, valid-type]
    """Record every ended span that reports GenAI token usage (``gen_ai.usage.*``) with
    ``target`` (Meter, PersistentDelivery, UsageTracker, or anything with
    ``record(**fields)``): ``tracer_provider.add_span_processor(UsageSpanProcessor(meter))``.

    Token counts follow :func:`~usageledger.integrations.genai.from_genai_attributes`;
    the record's time is the span's start, ``payload`` has the ``operation``, the
    ``latency_ms`` and the span's ``trace_id``/``span_id``; the attributes in context
    where the span ends (``usageledger.attributes``) are added. Spans of agent or tool
    operations are skipped (they sum the calls under them), and so are spans of a
    provider that ``usageledger.instrument`` captures already (the same call must not be
    counted twice). Never raises into the traced code: a span it cannot read is counted
    in ``failed`` and logged once per kind."""

    def __init__(self, target: Any):
        self._record = recorder_for(target)
        self.target = target
        self.recorded = 0
        self.skipped = 0
        self.failed = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        try:
            fields = self.fields(span)
            if fields is not None:
                self._record(fields)
                self.recorded += 1
        except Exception as exc:
            from .capture import report

            self.failed += 1
            report("UsageSpanProcessor", exc)

    def fields(self, span: Any) -> dict[str, Any] | None:
        """The record keywords for ``span``; None when it is not one to record."""
        from .capture import plans
        from .context import current_attributes

        attrs = span.attributes or {}
        if not has_token_usage(attrs):
            return None
        operation = attrs.get(OPERATION_NAME)
        provider = attrs.get(PROVIDER_NAME) or attrs.get(LEGACY_SYSTEM)
        captured = _CAPTURED_BY.get(str(provider).lower())
        if operation in AGGREGATE_OPERATIONS or (
                captured is not None and plans.get(captured) is not None):
            self.skipped += 1
            return None
        fields = from_genai_attributes(attrs)
        fields.update(current_attributes())
        payload: dict[str, Any] = {
            "operation": operation if isinstance(operation, str) and operation else "chat"}
        start, end = getattr(span, "start_time", None), getattr(span, "end_time", None)
        if isinstance(start, int):
            fields["timestamp"] = datetime.fromtimestamp(start / 1e9, UTC)
            if isinstance(end, int) and end >= start:
                payload["latency_ms"] = round((end - start) / 1e6, 3)
        context = getattr(span, "context", None)
        if context is not None:
            payload["trace_id"] = format(context.trace_id, "032x")
            payload["span_id"] = format(context.span_id, "016x")
        fields["payload"] = payload
        return fields

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
