"""PostgreSQL's write path (binary COPY into the staging table, one INSERT ... RETURNING
whose rows feed the rollups): every record reads back as it was written (naive timestamps
taken as UTC, exact costs of any precision, tags, payload, the finer token counts), and
the hourly and daily rollups it keeps are exactly those rebuilt from the stored rows, for
batches that are new, partly stored already, or wholly stored already."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from usageledger.records import UsageRecord
from usageledger.storage import create_storage
from usageledger.storage import postgres as P
from usageledger.storage.memory import MemoryStorage

T0 = datetime(2025, 3, 30, 21, tzinfo=UTC)
#: nano-exact, finer than a nano-unit, more nano-units than 64 bits hold, unknown (the sums
#: stay within the 28 digits of Decimal's default context, in which totals are read)
COSTS = [Decimal("0.00012"), Decimal("0.000000000123"), Decimal("12345678901.123456789"), None,
         Decimal("3")]


def _records(n: int) -> list[UsageRecord]:
    rnd = random.Random(7)
    out = []
    for i in range(n):
        ts = T0 + timedelta(seconds=rnd.randrange(3 * 86400))
        if i % 50 == 0:
            ts = ts.replace(tzinfo=None)  # naive: taken as UTC
        tags = {"env": rnd.choice(["prod", "dev"])} if rnd.random() < 0.7 else {}
        if rnd.random() < 0.3:
            tags["team"] = f"t{rnd.randrange(3)}"
        out.append(UsageRecord(
            f"w-{i:05d}", ts, "openai", f"m{rnd.randrange(3)}", rnd.randrange(5000), rnd.randrange(900),
            rnd.randrange(100), rnd.randrange(50), rnd.randrange(20), COSTS[i % len(COSTS)],
            "EUR" if i % 9 == 0 else "USD",
            None if rnd.random() < 0.2 else f"u{rnd.randrange(30)}",
            None if rnd.random() < 0.3 else f"s{rnd.randrange(200)}",
            None if rnd.random() < 0.4 else f"c{rnd.randrange(5)}",
            tags=tags, cache_write_1h_tokens=rnd.randrange(3), input_audio_tokens=rnd.randrange(4),
            output_image_tokens=rnd.randrange(2),
        ))
    return out


def _rollups(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4").fetchall()
                for t in ("usage_hourly", "usage_daily")}


@pytest.fixture
def pg_store(storage_pg_url):
    store = create_storage(storage_pg_url)
    store.clear()
    yield store
    store.clear()
    store.close()


def test_rollups_equal_a_rebuild_from_the_rows(pg_store, storage_pg_url):
    recs = _records(2400)
    pg_store.save_many(recs[:1000])
    assert pg_store.save_many(recs[:1000]) == set()  # every one stored already
    partly = recs[500:1500] + recs[1500:1600]  # half stored, and ids twice in one batch
    assert pg_store.save_many(partly) == {r.id for r in recs[1000:1600]}
    assert pg_store.save_many(recs[1600:]) == {r.id for r in recs[1600:]}
    kept = _rollups(storage_pg_url)
    with psycopg.connect(storage_pg_url) as conn:
        conn.execute("TRUNCATE usage_hourly, usage_daily")
        conn.execute(P._ROLLUP_BACKFILL)
        conn.execute(P._DAILY_BACKFILL)
    assert kept == _rollups(storage_pg_url)
    with psycopg.connect(storage_pg_url) as conn:  # the month rows: the sums of the day rows
        conn.execute("DELETE FROM usage_daily WHERE left(dim, 1) = '@'")
        conn.execute(P._MONTHS_FROM_DAYS)
    assert kept == _rollups(storage_pg_url)
    assert any(row[0].startswith("@") for row in kept["usage_daily"])
    reference = MemoryStorage()
    reference.save_many(recs)
    for keys in [(), ("day", "model"), ("hour", "currency"), ("user_id",), ("tag:env",), ("day", "session_id")]:
        assert pg_store.aggregate(keys) == reference.aggregate(keys), keys


def test_costs_of_any_precision_are_summed_exactly(pg_store):
    recs = _records(len(COSTS) * 3)
    pg_store.save_many(recs)
    (row,) = [t for t in pg_store.aggregate(("currency",)) if t["currency"] == "USD"]
    exact = sum((r.cost for r in recs if r.cost is not None and r.currency == "USD"), Decimal(0))
    assert row["cost"] == exact and str(exact).count("E") == 0
    assert row["unknown_cost"] == sum(1 for r in recs if r.cost is None and r.currency == "USD")


def test_records_read_back_as_written(pg_store):
    recs = _records(300)
    recs[0] = UsageRecord("w-payload", T0, "anthropic", "m1", 5, 6, cost=Decimal("0.000000000001"),
                          tags={"a": "é\t\\n", "b": ""}, payload={"k": [1, "x"], "n": None},
                          response_id="r1", run_id="run-1", service_tier="flex", output_audio_tokens=4)
    pg_store.save_many(recs)
    back = {r.id: r for r in pg_store.query(limit=None)}
    for r in recs:
        want = r if r.timestamp.tzinfo else UsageRecord(
            *[r.timestamp.replace(tzinfo=UTC) if f == "timestamp" else getattr(r, f)
              for f in UsageRecord.__struct_fields__])
        assert back[r.id] == want, r.id
