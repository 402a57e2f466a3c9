"""Validation in the caller's thread: clear errors naming field and value; nothing written."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pytest

from usageledger.records import decode_usage, encode, make_usage_record, new_id


def test_new_id_is_uuid7_and_time_ordered():
    a, b = new_id(), new_id()
    assert a[14] == "7" and len(a) == 36
    assert a < b


def test_round_trip_keeps_decimal_and_utc():
    r = make_usage_record("openai", "gpt-4o", 10, 20, cost="0.000001", tags={"team": "a"},
                          timestamp=datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    back = decode_usage(encode(r))
    assert back == r
    assert back.cost == Decimal("0.000001")
    assert back.timestamp == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_naive_timestamp_is_utc():
    r = make_usage_record("p", "m", timestamp=datetime(2026, 1, 1, 0, 0))
    assert r.timestamp.tzinfo is UTC and r.timestamp.hour == 0


def test_float_cost_is_exact_decimal_of_its_repr():
    assert make_usage_record("p", "m", cost=0.1).cost == Decimal("0.1")


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"input_tokens": -1}, ValueError, ["input_tokens", "-1"]),
        ({"output_tokens": 1.5}, TypeError, ["output_tokens", "1.5"]),
        ({"cache_read_tokens": "3"}, TypeError, ["cache_read_tokens", "'3'"]),
        ({"reasoning_tokens": True}, TypeError, ["reasoning_tokens", "True"]),
        ({"cost": math.nan}, ValueError, ["cost", "nan"]),
        ({"cost": math.inf}, ValueError, ["cost", "inf"]),
        ({"cost": -1}, ValueError, ["cost", "-1"]),
        ({"cost": "abc"}, ValueError, ["cost", "abc"]),
        ({"tags": {"a": 1}}, TypeError, ["tags", "'a'", "1"]),
        ({"tags": {1: "a"}}, TypeError, ["tags", "1"]),
        ({"tags": ["a"]}, TypeError, ["tags"]),
        ({"payload": {"x": object()}}, TypeError, ["payload"]),
        ({"payload": {"x": [1, math.nan]}}, ValueError, ["payload.x[1]", "nan"]),
        ({"payload": "text"}, TypeError, ["payload", "text"]),
        ({"user_id": 5}, TypeError, ["user_id", "5"]),
        ({"timestamp": "2026-01-01"}, TypeError, ["timestamp"]),
    ],
)
def test_bad_input_names_field_and_value(kwargs, exc, words):
    with pytest.raises(exc) as info:
        make_usage_record("openai", "gpt-4o", **kwargs)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("field", ["provider", "model"])
def test_provider_and_model_required(field):
    args = {"provider": "openai", "model": "gpt-4o", field: ""}
    with pytest.raises(ValueError, match=field):
        make_usage_record(**args)


def test_payload_is_copied():
    payload = {"a": [1, 2]}
    tags = {"k": "v"}
    r = make_usage_record("p", "m", payload=payload, tags=tags)
    payload["a"].append(3)
    tags["k"] = "changed"
    assert r.payload == {"a": [1, 2]} and r.tags == {"k": "v"}


def test_encoding_is_compact_json():
    r = make_usage_record("p", "m", 1, 2)
    doc = msgspec.json.decode(encode(r))
    assert doc["provider"] == "p" and doc["input_tokens"] == 1 and "cost" not in doc
