"""GenAI attribute mapping and OtelMetricsSink through a real pipeline."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from usageledger.integrations.genai import (
    TOKEN_USAGE_BUCKETS,
    TOKEN_USAGE_METRIC,
    from_genai_attributes,
    to_genai_attributes,
)
from usageledger.integrations.otel import OtelMetricsSink
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
