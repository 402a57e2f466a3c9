"""Reprice in memory, SQLite and PostgreSQL: unknown costs become exact, priced records
change only when asked, and every summary after reprice equals a fresh ingest of the same
records (the rollups follow exactly)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from usageledger.pricebook import PriceBook, entry_json, parse_price
from usageledger.records import make_usage_record
from usageledger.reprice import reprice
from usageledger.storage import create_storage

T0 = datetime(2025, 3, 8, 22, tzinfo=UTC)
GROUPINGS = [(), ("day",), ("hour", "model"), ("provider", "model"), ("day", "currency"), ("user_id",),
             ("customer_key", "day"), ("tag:team",), ("day", "session_id")]


def records(n: int = 120):
    out = []
    for i in range(n):
        model = ("my-ft", "other-ft", "gpt-4o-mini")[i % 3]
        out.append(msgspec_replace(make_usage_record(
            "openai", model, 1000 + i, 10 * i, cache_read_tokens=i % 7, reasoning_tokens=i % 5,
            user_id=f"u{i % 4}", customer_key=None if i % 5 else "c1", session_id=f"s{i % 2}",
            tags={"team": "ab"[i % 2]}, cost="0.5" if i % 10 == 0 else None,
        ), timestamp=T0 + timedelta(minutes=37 * i)))
    return out


def msgspec_replace(rec, **kw):
    import msgspec

    return msgspec.structs.replace(rec, **kw)


def put(store, model, day, **prices):
    store.put_price("openai", model, day, entry_json(parse_price(prices)[1]))


def summaries(store):
    return {g: store.aggregate(g) for g in GROUPINGS}


def assert_same_budgets(store, fresh, currencies):
    """Budgets' spend follows a reprice: the same status as over a fresh ingest."""
    from usageledger.budgets import Budgets

    for cur in currencies:
        for name, scope in (("all", {}), ("u1", {"user_id": "u1"}), ("team-a", {"tags": {"team": "a"}})):
            body = {"scope": scope, "limit": "100", "period": "total", "currency": cur}
            Budgets(store).put(name, body)
            Budgets(fresh).put(name, body)
            got, want = Budgets(store).status(name), Budgets(fresh).status(name)
            # equal amounts (SQL backends and memory may write one amount with other trailing zeros)
            for d in (got, want):
                for k in ("spent", "remaining"):
                    d[k] = Decimal(d[k])
            assert got == want, (name, cur)
            assert Decimal(got["spent"]) > 0, (name, cur)


def test_reprice_unknown_then_all_equals_fresh_ingest(store, tmp_path):
    recs = records()
    store.save_many(recs)  # my-ft and other-ft have no price yet: cost unknown
    before = {r.id: r.cost for r in store.query()}
    assert sum(c is None for c in before.values()) == 108  # all but the 12 sent with a cost
    put(store, "my-ft", "", input_per_mtok="1.10", output_per_mtok="4.40", cache_read_per_mtok="0.275")
    put(store, "my-ft", "2025-03-10", input_per_mtok="0.8", output_per_mtok="3.2", per_request="0.0001",
        currency="EUR")
    put(store, "other-ft", "", input_per_mtok="3", output_per_mtok="12", reasoning_per_mtok="20")

    seen_progress = []
    got = reprice(store, only_unknown=True, batch_size=17, progress=lambda s, c: seen_progress.append((s, c)))
    assert got == {"seen": 120, "changed": 108} and seen_progress[-1] == (120, 108)
    book = PriceBook(store)
    after = {r.id: r for r in store.query()}
    for r in recs:
        if before[r.id] is not None:
            assert after[r.id].cost == before[r.id]  # already priced: unchanged when only_unknown
        else:
            cost, currency = book.cost(r)
            assert (after[r.id].cost, after[r.id].currency) == (cost, currency)
    one = next(r for r in recs if r.model == "my-ft" and r.cost is None and r.timestamp < datetime(2025, 3, 10, tzinfo=UTC))
    expected = (one.input_tokens * Decimal("1.10") + one.output_tokens * Decimal("4.40")
                + one.cache_read_tokens * Decimal("0.275")) / 1_000_000
    assert after[one.id].cost == expected

    fresh = create_storage("memory")
    fresh.save_many(list(after.values()))
    assert summaries(store) == summaries(fresh)
    assert_same_budgets(store, fresh, currencies=("USD", "EUR"))
    # idempotent: a second run changes nothing
    assert reprice(store, only_unknown=True) == {"seen": 120, "changed": 0}

    # a price change applied to everything already stored (the provider's own cost included)
    put(store, "my-ft", "2025-03-10", input_per_mtok="0.5", output_per_mtok="2", currency="USD")
    got = reprice(store, model="my-ft", since=datetime(2025, 3, 10, tzinfo=UTC))
    assert got["changed"] > 0
    final = {r.id: r for r in store.query()}
    for r in recs:
        if r.model == "my-ft" and r.timestamp >= datetime(2025, 3, 10, tzinfo=UTC):
            assert final[r.id].currency == "USD"
            assert final[r.id].cost == (r.input_tokens * Decimal("0.5") + r.output_tokens * 2
                                         + r.cache_read_tokens * Decimal("0.5")) / 1_000_000
        elif r.model == "my-ft":
            assert final[r.id].cost == after[r.id].cost
    fresh2 = create_storage("memory")
    fresh2.save_many(list(final.values()))
    assert summaries(store) == summaries(fresh2)
    assert_same_budgets(store, fresh2, currencies=("USD",))
