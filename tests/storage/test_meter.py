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


@pytest.mark.parametrize("kind", ["memory", "sqlite", "jsonl"])
def test_cost_never_adds_currencies(kind, tmp_path):
    """1 USD + 2 EUR: Meter.cost() refuses to answer one number and names both
    currencies; per currency it answers; summary rows carry their currency."""
    from usageledger import MixedCurrencyError, UsageLedgerError

    options = {"memory": {}, "sqlite": {"db_path": tmp_path / "m.db"},
               "jsonl": {"path": tmp_path / "m.jsonl"}}[kind]
    with Meter(kind, **options) as meter:
        meter.record("openai", "gpt-4o", 10, 5, cost="1", currency="USD")
        meter.record("mistral", "large", 10, 5, cost="2", currency="EUR", user_id="eu")
        with pytest.raises(MixedCurrencyError, match="EUR, USD") as err:
            meter.cost()
        assert isinstance(err.value, ValueError) and isinstance(err.value, UsageLedgerError)
        assert meter.cost(currency="USD") == Decimal(1) and meter.cost(currency="EUR") == Decimal(2)
        assert meter.cost(user_id="eu") == Decimal(2)  # one currency: one number
        assert meter.totals().costs == {"USD": Decimal(1), "EUR": Decimal(2)}
        rows = meter.summary(("model",))
        assert [(r["model"], r["currency"], r["cost"]) for r in rows] == [
            ("gpt-4o", "USD", Decimal(1)), ("large", "EUR", Decimal(2))]


def test_one_total_tokens_everywhere(tmp_path):
    """The same call counts the same total_tokens in the record, a storage row, Totals and
    the tracker: uncached input + cache reads + cache writes + output (20 + 5 + 5 + 10)."""
    from usageledger import UsageTracker
    from usageledger.records import make_usage_record
    from usageledger.totals import Totals

    rec = make_usage_record("openai", "gpt-4o", 20, 10, cache_read_tokens=5,
                            cache_write_tokens=5, reasoning_tokens=4, cost="0.1")
    assert rec.total_tokens == 40
    store = MemoryStorage()
    store.save_many([rec])
    (row,) = store.aggregate(())
    assert row["total_tokens"] == 40 and Totals.of_records([rec]).total_tokens == 40
    with Meter(store) as meter:
        assert meter.totals().total_tokens == 40
    t = UsageTracker(tmp_path / "u.json", durability="memory")
    try:
        t.record("gpt-4o", 20, 10, provider="openai", cache_read_tokens=5, cache_write_tokens=5,
                 reasoning_tokens=4, cost="0.1")
        assert t.get_today()["total_tokens"] == 40
    finally:
        t.shutdown()
