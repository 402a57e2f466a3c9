"""Exact money at scale: 1,000,000 records costing 0.000001 each sum to exactly 1 in every
backend, and the aggregate totals equal the sum over the records read back."""

from __future__ import annotations

import time
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
    assert sum(g["count"] for g in by_day_model) == N
    model_cost = {m: sum(g["cost"] for g in by_day_model if g["model"] == m) for m in MODELS}
    assert model_cost == dict.fromkeys(MODELS, Decimal("0.2"))

    # aggregate totals equal the sum of the query results: one model's 200,000 records read
    # back (all five would only repeat the same check at five times the cost)
    read_started = time.perf_counter()
    records = list(store.iter_records(batch_size=50_000, model="m3"))
    read = time.perf_counter() - read_started
    assert len(records) == N // 5 and len({r.id for r in records}) == N // 5
    assert sum(r.cost for r in records) == model_cost["m3"]
    (m3,) = store.aggregate((), model="m3")
    assert m3["cost"] == sum(r.cost for r in records) and m3["count"] == len(records)
    print(f"\n{request.node.callspec.id}: save_many {N:,} in {saved:.1f} s, "
          f"read back {len(records):,} in {read:.1f} s", end="")
