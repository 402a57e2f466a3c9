"""Meter: record (non-blocking, through the pipeline) then query, summary and cost."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from usageledger import Meter
from usageledger.pricing import calculate_cost
from usageledger.storage.memory import MemoryStorage


@pytest.mark.parametrize("kind", ["memory", "sqlite", "jsonl"])
def test_record_then_query_summary_and_cost(kind, tmp_path):
    options = {"memory": {}, "sqlite": {"db_path": tmp_path / "m.db"},
               "jsonl": {"path": tmp_path / "m.jsonl"}}[kind]
    with Meter(kind, **options) as meter:
        day1 = datetime(2025, 5, 1, 10, tzinfo=UTC)
        day2 = datetime(2025, 5, 2, 10, tzinfo=UTC)
        ids = [
            meter.record("openai", "gpt-4o", 1000, 100, user_id="u1", timestamp=day1,
                         tags={"team": "a"}),
            meter.record("openai", "gpt-4o", 2000, 0, cache_read_tokens=500, timestamp=day2),
            meter.record("acme", "custom", 10, 10, cost="0.5", timestamp=day2, user_id="u1"),
        ]
        got = meter.query()
        assert [r.id for r in got] == [ids[2], ids[1], ids[0]]  # flushed, newest first
        assert got[2].cost == calculate_cost("gpt-4o", 1000, 100, provider="openai")
        # gpt-4o list prices per million: input $2.50, cached input $1.25, output $10; cache
        # tokens are apart from input_tokens (docs/storage.md)
        assert [r.cost for r in got] == [Decimal("0.5"), Decimal("0.005625"), Decimal("0.0035")]
        assert [r.id for r in meter.query(user_id="u1", tags={"team": "a"})] == [ids[0]]
        summary = meter.summary(("day", "model"))
        assert [(g["day"], g["model"], g["count"]) for g in summary] == [
            ("2025-05-01", "gpt-4o", 1), ("2025-05-02", "custom", 1), ("2025-05-02", "gpt-4o", 1)]
        expected = sum(r.cost for r in got)
        assert meter.cost() == expected
        assert meter.cost(user_id="u1") == got[0].cost + got[2].cost
        assert sum(g["cost"] for g in summary) == expected
    if kind != "memory":  # closed and reopened: everything recorded was kept
        with Meter(kind, **options) as again:
            assert {r.id for r in again.query()} == set(ids)


def test_prices_override_and_unknown_model(caplog):
    prices = {"house-model": {"input": "2", "output": "4"}}
    with caplog.at_level(logging.WARNING, logger="usageledger.pricing"), \
            Meter("memory", prices=prices) as meter:
        meter.record("me", "house-model", 1_000_000, 500_000)
        for _ in range(3):
            meter.record("me", "never-heard-of-it-model", 10, 10)
        by_model = {g["model"]: g for g in meter.summary("model")}
    assert by_model["house-model"]["cost"] == Decimal(4)
    assert by_model["never-heard-of-it-model"]["unknown_cost"] == 3
    assert by_model["never-heard-of-it-model"]["cost"] == 0
    warned = [r for r in caplog.records if "never-heard-of-it-model" in r.getMessage()]
    assert len(warned) == 1


def test_bad_prices_fail_at_construction():
    with pytest.raises(ValueError, match="output"):
        Meter("memory", prices={"m": {"input": 1}})


def test_a_storage_instance_and_its_options_are_exclusive():
    store = MemoryStorage()
    with Meter(store) as meter:
        meter.record("p", "m", 1, 1, cost=1)
        assert meter.storage is store
        assert meter.query()[0].cost == 1
    with pytest.raises(TypeError, match="db_path"):
        Meter(MemoryStorage(), db_path="x")
