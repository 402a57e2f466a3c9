"""GenAI attribute mapping, OtelMetricsSink through a real pipeline, and UsageSpanProcessor
with a real TracerProvider."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from usageledger.integrations.genai import (
    OPERATION_DURATION_BUCKETS,
    TOKEN_USAGE_BUCKETS,
    TOKEN_USAGE_METRIC,
    from_genai_attributes,
    to_genai_attributes,
)
from usageledger.integrations.otel import OtelMetricsSink, UsageSpanProcessor
from usageledger.meter import Meter
from usageledger.pipeline import Pipeline
from usageledger.records import KIND_RAW, KIND_USAGE, make_usage_record


def test_to_genai_counts_cache_tokens_inside_input():
    rec = make_usage_record("anthropic", "claude-sonnet-4-20250514", 50, 200,
                            cache_read_tokens=3000, cache_write_tokens=700,
                            reasoning_tokens=30, response_id="msg_1")
    assert to_genai_attributes(rec) == {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-20250514",
        "gen_ai.response.model": "claude-sonnet-4-20250514",
        "gen_ai.usage.input_tokens": 3750,
        "gen_ai.usage.output_tokens": 200,
        "gen_ai.usage.cache_read.input_tokens": 3000,
        "gen_ai.usage.cache_creation.input_tokens": 700,
        "gen_ai.usage.reasoning.output_tokens": 30,
        "gen_ai.response.id": "msg_1",
    }


@pytest.mark.parametrize("tokens", [
    dict(input_tokens=0, output_tokens=0),
    dict(input_tokens=600, output_tokens=300, cache_read_tokens=400, reasoning_tokens=120),
    dict(input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_write_tokens=4),
])
def test_genai_round_trip(tokens):
    rec = make_usage_record("openai", "gpt-4o", response_id="chatcmpl-1", **tokens)
    fields = from_genai_attributes(to_genai_attributes(rec))
    again = make_usage_record(**fields, id=rec.id, timestamp=rec.timestamp)
    assert again == rec


def test_from_genai_reads_the_legacy_system_and_the_request_model():
    fields = from_genai_attributes({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
                                    "gen_ai.usage.input_tokens": 7})
    assert (fields["provider"], fields["model"], fields["input_tokens"],
            fields["output_tokens"]) == ("openai", "gpt-4o", 7, 0)


def test_from_genai_errors_name_the_attribute():
    with pytest.raises(ValueError, match="gen_ai.provider.name must be a non-empty string"):
        from_genai_attributes({"gen_ai.request.model": "gpt-4o"})
    with pytest.raises(ValueError, match="gen_ai.response.model or gen_ai.request.model"):
        from_genai_attributes({"gen_ai.provider.name": "openai"})
    with pytest.raises(ValueError, match="gen_ai.usage.input_tokens=5 must include the cache"):
        from_genai_attributes({"gen_ai.provider.name": "openai", "gen_ai.request.model": "m",
                               "gen_ai.usage.input_tokens": 5,
                               "gen_ai.usage.cache_read.input_tokens": 6})


def _histogram_points(reader: InMemoryMetricReader) -> list:
    data = reader.get_metrics_data()
    return [point
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == TOKEN_USAGE_METRIC and m.unit == "{token}"
            for point in m.data.data_points]


def test_otel_sink_histogram_sums_per_token_type_through_a_pipeline():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pipeline = Pipeline(OtelMetricsSink(provider), durability="memory", batch_interval=0.01)
    records = [
        make_usage_record("openai", "gpt-4o", 600, 300, cache_read_tokens=400),
        make_usage_record("openai", "gpt-4o", 10, 5),
        make_usage_record("anthropic", "claude-3-haiku-20240307", 50, 200,
                          cache_read_tokens=3000, cache_write_tokens=700),
    ]
    try:
        for rec in records:
            pipeline.submit(rec.id, KIND_USAGE, rec)
        pipeline.submit("not-usage", KIND_RAW, b'{"id":"not-usage"}')
        assert pipeline.flush(10)
        dead = pipeline.journal.items("dead")
    finally:
        pipeline.stop(10)
        provider.shutdown()
    assert [d["id"] for d in dead] == ["not-usage"]
    sums = {}
    counts = {}
    for point in _histogram_points(reader):
        key = (point.attributes["gen_ai.provider.name"], point.attributes["gen_ai.response.model"],
               point.attributes["gen_ai.token.type"])
        assert point.attributes["gen_ai.request.model"] == key[1]
        assert tuple(point.explicit_bounds) == TOKEN_USAGE_BUCKETS
        sums[key] = point.sum
        counts[key] = point.count
    assert sums == {
        ("openai", "gpt-4o", "input"): 1000 + 10,
        ("openai", "gpt-4o", "output"): 305,
        ("anthropic", "claude-3-haiku-20240307", "input"): 3750,
        ("anthropic", "claude-3-haiku-20240307", "output"): 200,
    }
    assert counts[("openai", "gpt-4o", "input")] == 2


def test_otel_sink_measures_a_redelivered_record_once():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sink = OtelMetricsSink(provider)
    rec = make_usage_record("openai", "gpt-4o", 10, 5)
    pipeline = Pipeline(sink, durability="memory", batch_interval=0.01)
    try:
        pipeline.submit(rec.id, KIND_USAGE, rec)
        assert pipeline.flush(10)
        pipeline.submit(rec.id, KIND_USAGE, rec)  # the same id again, as after a lost ack
        assert pipeline.flush(10)
    finally:
        pipeline.stop(10)
        provider.shutdown()
    points = {p.attributes["gen_ai.token.type"]: (p.count, p.sum)
              for p in _histogram_points(reader)}
    assert points == {"input": (1, 10), "output": (1, 5)}


def test_otel_sink_without_opentelemetry_names_the_extra(monkeypatch):
    # a None entry in sys.modules makes the import fail as if the package were absent
    monkeypatch.setitem(__import__("sys").modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'usageledger\[otel\]'"):
        OtelMetricsSink()


def _metric_points(reader: InMemoryMetricReader, name: str) -> list:
    data = reader.get_metrics_data()
    return [point
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name
            for point in m.data.data_points]


def test_otel_sink_names_the_operation_and_records_the_duration():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pipeline = Pipeline(OtelMetricsSink(provider), durability="memory", batch_interval=0.01)
    records = [
        # as instrument() makes them: the operation and latency in the payload
        make_usage_record("openai", "gpt-4o", 10, 5,
                          payload={"operation": "chat", "latency_ms": 250.0}),
        make_usage_record("openai", "gpt-4o", 10, 5,
                          payload={"operation": "chat", "latency_ms": 1500.0, "stream": True}),
        make_usage_record("openai", "text-embedding-3-small", 8,
                          payload={"operation": "embeddings", "latency_ms": 40.0}),
        make_usage_record("anthropic", "claude-3-haiku", 7, 3),  # by hand: chat, no duration
    ]
    try:
        for rec in records:
            pipeline.submit(rec.id, KIND_USAGE, rec)
        assert pipeline.flush(10)
    finally:
        pipeline.stop(10)
        provider.shutdown()
    tokens = {(p.attributes["gen_ai.operation.name"], p.attributes["gen_ai.request.model"],
               p.attributes["gen_ai.token.type"]): p.sum
              for p in _metric_points(reader, "gen_ai.client.token.usage")}
    assert tokens == {
        ("chat", "gpt-4o", "input"): 20, ("chat", "gpt-4o", "output"): 10,
        ("embeddings", "text-embedding-3-small", "input"): 8,
        ("embeddings", "text-embedding-3-small", "output"): 0,
        ("chat", "claude-3-haiku", "input"): 7, ("chat", "claude-3-haiku", "output"): 3,
    }
    durations = {(p.attributes["gen_ai.operation.name"], p.attributes["gen_ai.provider.name"],
                  p.attributes["gen_ai.response.model"]): (p.count, p.sum, tuple(p.explicit_bounds))
                 for p in _metric_points(reader, "gen_ai.client.operation.duration")}
    bounds = OPERATION_DURATION_BUCKETS
    assert durations == {
        ("chat", "openai", "gpt-4o"): (2, pytest.approx(1.75), bounds),
        ("embeddings", "openai", "text-embedding-3-small"): (1, pytest.approx(0.04), bounds),
    }


def _tracing(target):
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    processor = UsageSpanProcessor(target)
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("test"), processor


def test_span_processor_turns_genai_spans_into_records():
    import usageledger

    with Meter() as meter:
        provider, tracer, processor = _tracing(meter)
        with usageledger.attributes(user_id="u7", tags={"app": "otel"}):
            with tracer.start_as_current_span("chat gpt-4o") as span:
                span.set_attributes({
                    "gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                    "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                    "gen_ai.response.id": "chatcmpl-9", "gen_ai.usage.input_tokens": 1000,
                    "gen_ai.usage.cache_read.input_tokens": 400, "gen_ai.usage.output_tokens": 300,
                    "gen_ai.usage.reasoning.output_tokens": 120})
                context = span.get_span_context()
        # not recorded: an agent span summing its calls, a span without usage, any other span
        with tracer.start_as_current_span("invoke_agent") as agent:
            agent.set_attributes({"gen_ai.operation.name": "invoke_agent",
                                  "gen_ai.provider.name": "openai", "gen_ai.request.model": "m",
                                  "gen_ai.usage.input_tokens": 5000})
        with tracer.start_as_current_span("tool") as tool:
            tool.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "x"})
        with tracer.start_as_current_span("http"):
            pass
        # an older instrumentation's names
        with tracer.start_as_current_span("anthropic.chat") as old:
            old.set_attributes({"gen_ai.system": "anthropic", "gen_ai.request.model": "claude-3",
                                "gen_ai.usage.prompt_tokens": 70,
                                "gen_ai.usage.completion_tokens": 7})
        provider.shutdown()
        records = sorted(meter.query(), key=lambda r: r.provider)
    assert processor.recorded == 2 and processor.skipped == 1
    first = records[1]
    assert (first.provider, first.model, first.input_tokens, first.cache_read_tokens,
            first.output_tokens, first.reasoning_tokens, first.response_id) == (
        "openai", "gpt-4o-2024-08-06", 600, 400, 300, 120, "chatcmpl-9")
    assert (first.user_id, first.tags) == ("u7", {"app": "otel"})
    assert first.payload["operation"] == "chat" and first.payload["latency_ms"] >= 0
    assert first.payload["trace_id"] == format(context.trace_id, "032x")
    assert (records[0].provider, records[0].model, records[0].input_tokens,
            records[0].output_tokens) == ("anthropic", "claude-3", 70, 7)


def test_span_processor_skips_calls_instrument_captures_and_never_raises():
    import usageledger

    with Meter() as meter:
        provider, tracer, processor = _tracing(meter)
        handle = usageledger.instrument(meter, providers=["openai"])
        try:
            for system in ("openai", "anthropic"):
                with tracer.start_as_current_span("chat") as span:
                    span.set_attributes({"gen_ai.system": system, "gen_ai.request.model": "m",
                                         "gen_ai.usage.input_tokens": 3,
                                         "gen_ai.usage.output_tokens": 1})
        finally:
            handle.uninstrument()
        with tracer.start_as_current_span("bad") as span:  # cache above the input total
            span.set_attributes({"gen_ai.system": "openai", "gen_ai.request.model": "m",
                                 "gen_ai.usage.input_tokens": 3,
                                 "gen_ai.usage.cache_read.input_tokens": 9})
        provider.shutdown()
        assert [r.provider for r in meter.query()] == ["anthropic"]
    assert (processor.recorded, processor.skipped, processor.failed) == (1, 1, 1)
