"""enqueue() refuses payloads JSON cannot hold with ValueError/TypeError naming the
problem, never RecursionError (deep or circular dicts)."""

from __future__ import annotations

import pytest

from usageledger import limits
from usageledger.delivery import PersistentDelivery
from usageledger.records import make_usage_record


def _nested(depth: int) -> dict:
    """A dict nested ``depth`` levels deep (``{}`` is one level)."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.fixture
def delivery(tmp_path):
    d = PersistentDelivery(db_path=tmp_path / "q.db", api_base="http://127.0.0.1:9", durability="memory")
    yield d
    d.stop(1)


def test_enqueue_refuses_deep_and_circular_payloads_by_name(delivery):
    circular: dict = {"api_id": "a"}
    circular["self"] = circular
    listed: list = []
    listed.append(listed)
    for payload in (_nested(5000), circular, {"api_id": "a", "payload": _nested(limits.MAX_JSON_DEPTH + 1)},
                    {"x": listed}):
        with pytest.raises(ValueError, match="payload is nested more than"):
            delivery.enqueue(payload)
    # what the collector takes is taken: a payload field nested to the limit
    assert delivery.enqueue({"api_id": "a", "service_key": "m", "payload": _nested(limits.MAX_JSON_DEPTH)})


def test_make_usage_record_refuses_deep_and_circular_payloads():
    circular: dict = {}
    circular["me"] = circular
    for payload in (_nested(5000), circular, _nested(limits.MAX_JSON_DEPTH + 1)):
        with pytest.raises(ValueError, match="payload is nested more than"):
            make_usage_record("p", "m", payload=payload)
    assert make_usage_record("p", "m", payload=_nested(limits.MAX_JSON_DEPTH)).payload
