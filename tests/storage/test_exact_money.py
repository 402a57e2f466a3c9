"""Exact money at scale: 1,000,000 records costing 0.000001 each sum to exactly 1 in every
backend, and the aggregate totals equal the sum over the records read back."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from usageledger.records import UsageRecord, new_id

N = 1_000_000
BATCH = 50_000
MODELS = ("m0", "m1", "m2", "m3", "m4")


@pytest.fixture(scope="module")
def million() -> list[UsageRecord]:
    """Built positionally (make_usage_record's checks would dominate the setup time)."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    micro = Decimal("0.000001")
    stamps = [t0 + timedelta(seconds=s) for s in range(0, 8 * 86400, 8 * 86400 // 1000)]
    return [
        UsageRecord(new_id(), stamps[i * 1000 // N], "p", MODELS[i % 5], 3, 2, 0, 0, 0, micro)
        for i in range(N)
    ]


def test_a_million_micro_costs_sum_to_exactly_one(opener, million, request):
    store = opener()
    started = time.perf_counter()
    new = 0
    for i in range(0, N, BATCH):
        new += len(store.save_many(million[i:i + BATCH]))
    saved = time.perf_counter() - started
    assert new == N
    assert store.save_many(million[:1000]) == set()

    (total,) = store.aggregate(())
    assert total["cost"] == Decimal(1) and total["count"] == N
    assert total["input_tokens"] == 3 * N and total["unknown_cost"] == 0
    by_day_model = store.aggregate(("day", "model"))
    assert len(by_day_model) == 8 * 5
    assert sum(g["cost"] for g in by_day_model) == Decimal(1)
    by_model = {g["model"]: g for g in store.aggregate("model")}
    assert {m: g["count"] for m, g in by_model.items()} == dict.fromkeys(MODELS, N // 5)

    # aggregate totals equal the sum of the query results: every record read back
    read_started = time.perf_counter()
    cost: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for rec in store.iter_records(batch_size=100_000):
        cost[rec.model] += rec.cost
        count[rec.model] += 1
    read = time.perf_counter() - read_started
    assert sum(cost.values()) == Decimal(1)
    for m in MODELS:
        assert cost[m] == by_model[m]["cost"] == Decimal("0.2") and count[m] == by_model[m]["count"]
    print(f"\n{request.node.callspec.id}: save_many {N:,} in {saved:.1f} s, "
          f"read back in {read:.1f} s", end="")
