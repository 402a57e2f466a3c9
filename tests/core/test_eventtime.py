"""Event time on the client: enqueue stamps what the caller did not date; the stamp is the
UUIDv7 id's own time; the caller's keys are never changed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from usageledger.eventtime import encode_stamped, json_time_ms, uuid7_time


def _decode(data: bytes) -> dict:
    return msgspec.json.decode(data)


def test_a_payload_without_id_and_timestamp_gets_both_dated_alike():
    before = datetime.now(UTC)
    id_, data = encode_stamped({"provider": "openai", "n": 1})
    after = datetime.now(UTC)
    obj = _decode(data)
    ts = datetime.fromisoformat(obj["timestamp"])
    assert obj == {"id": id_, "timestamp": obj["timestamp"], "provider": "openai", "n": 1}
    assert before - timedelta(milliseconds=1) <= ts <= after
    assert ts == uuid7_time(id_)  # one clock reading dates the id and the record


def test_the_callers_own_id_and_timestamp_are_kept():
    id_, data = encode_stamped({"id": "order-17", "timestamp": "2025-01-02T03:04:05Z"})
    assert id_ == "order-17" and _decode(data) == {"id": "order-17", "timestamp": "2025-01-02T03:04:05Z"}
    id_, data = encode_stamped({"id": "order-18"})
    obj = _decode(data)
    assert id_ == "order-18" and set(obj) == {"id", "timestamp"}
    assert abs(datetime.fromisoformat(obj["timestamp"]) - datetime.now(UTC)) < timedelta(seconds=5)
    id_, data = encode_stamped({"timestamp": None})  # given (even as null): not replaced
    assert _decode(data) == {"id": id_, "timestamp": None}
    id_, data = encode_stamped({})
    assert set(_decode(data)) == {"id", "timestamp"}


def test_bad_payloads_raise_naming_the_field():
    with pytest.raises(TypeError, match="payload"):
        encode_stamped([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"payload\.x"):
        encode_stamped({"x": math.nan})
    with pytest.raises(TypeError, match="payload"):
        encode_stamped({"x": object()})
    with pytest.raises(TypeError, match="id"):
        encode_stamped({"id": 5})
    assert _decode(encode_stamped({"x": None, "y": [None]})[1])["x"] is None  # a real null is fine


def test_millisecond_text_across_second_boundaries():
    assert json_time_ms(0) == "1970-01-01T00:00:00.000Z"
    assert json_time_ms(999) == "1970-01-01T00:00:00.999Z"
    assert json_time_ms(1000) == "1970-01-01T00:00:01.000Z"
    assert json_time_ms(1751327999987) == "2025-06-30T23:59:59.987Z"
    assert json_time_ms(1751328000000) == "2025-07-01T00:00:00.000Z"
    assert json_time_ms(1751327999001) == "2025-06-30T23:59:59.001Z"  # back in time works too


def test_uuid7_time_only_for_uuid7():
    import uuid_utils

    assert uuid7_time(str(uuid_utils.uuid7(nanoseconds=1751327999987654321))) == datetime(
        2025, 6, 30, 23, 59, 59, 987000, tzinfo=UTC)
    assert uuid7_time(str(uuid_utils.uuid4())) is None
    assert uuid7_time("order-17") is None and uuid7_time(None) is None
    assert uuid7_time("z" * 36) is None
