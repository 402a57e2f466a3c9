"""The daily totals per user, customer, session and tag (SQL backends): the query plan of
those aggregates reads the rollup table, never a scan of the records; any time range is
exact (partial days at its edges come from the records through the ts index); an older
database gets the rollup built at open."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from tests.storage.writer import T0, dataset
from usageledger.storage import create_storage
from usageledger.storage.memory import MemoryStorage

#: a scan of the raw table in either dialect ("SCAN usage", "Seq Scan on usage"), not of a
#: table whose name starts with usage_
RAW_SCAN = re.compile(r"\b(SCAN usage|Seq Scan on usage)\b(?!_)")


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/usage.db"
    return request.getfixturevalue("storage_pg_url")


@pytest.fixture
def filled(sql_url):
    store = create_storage(sql_url)
    store.clear()
    store.save_many(dataset(3000))
    yield store
    store.clear()
    store.close()


CASES = [
    (("user_id",), {}),
    (("customer_key",), {}),
    (("session_id",), {}),
    (("tag:env",), {}),
    (("day", "user_id"), {}),
    (("day",), {"customer_key": "c2"}),
    ((), {"user_id": "u7"}),
    (("tag:team",), {"tags": {"team": "t1"}}),
    (("user_id",), {"since": T0 + timedelta(days=1), "until": T0 + timedelta(days=3)}),
]


@pytest.mark.parametrize("keys, filters", CASES)
def test_dimension_totals_are_read_from_the_rollup(filled, keys, filters):
    plan = filled.explain_aggregate(keys, **filters)
    text = "\n".join(plan)
    assert "usage_daily" in text, text
    assert not RAW_SCAN.search(text), text
    reference = MemoryStorage()
    reference.save_many(dataset(3000))
    assert filled.aggregate(keys, **filters) == reference.aggregate(keys, **filters)


@pytest.mark.parametrize("since, until", [
    (T0 + timedelta(hours=7, minutes=13), T0 + timedelta(days=3, hours=2, seconds=5)),
    (T0 + timedelta(minutes=1), None),
    (None, T0 + timedelta(days=2, microseconds=1)),
])
def test_any_time_range_is_exact_with_the_edges_from_the_records(filled, since, until):
    reference = MemoryStorage()
    reference.save_many(dataset(3000))
    for keys in (("user_id",), ("day", "tag:env"), ("customer_key",)):
        f = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        assert filled.aggregate(keys, **f) == reference.aggregate(keys, **f), keys
        text = "\n".join(filled.explain_aggregate(keys, **f))
        assert "usage_daily" in text and not RAW_SCAN.search(text), text


def test_aggregates_the_rollup_cannot_answer_still_scan(filled):
    """Two dimensions at once, or a model filter: read from the records (correct, slower)."""
    reference = MemoryStorage()
    reference.save_many(dataset(3000))
    for keys, f in ((("user_id", "customer_key"), {}), (("user_id",), {"model": "m1"})):
        assert "usage_daily" not in "\n".join(filled.explain_aggregate(keys, **f))
        assert filled.aggregate(keys, **f) == reference.aggregate(keys, **f)


def test_an_older_database_gets_the_daily_totals_at_open(sql_url):
    store = create_storage(sql_url)
    store.clear()
    store.save_many(dataset(1000))
    store.close()
    if sql_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(sql_url.removeprefix("sqlite:///")) as conn:
            conn.execute("DROP TABLE usage_daily")
    else:
        import psycopg

        with psycopg.connect(sql_url, autocommit=True) as conn:
            conn.execute("DROP TABLE usage_daily")
    store = create_storage(sql_url)
    try:
        reference = MemoryStorage()
        reference.save_many(dataset(1000))
        for keys in (("user_id",), ("tag:env",), ("day", "session_id")):
            assert store.aggregate(keys) == reference.aggregate(keys)
    finally:
        store.clear()
        store.close()


def _rollup_rows(sql_url: str) -> dict[str, list[tuple]]:
    """Every row of both rollup tables, sorted (SQLite and PostgreSQL alike)."""
    if sql_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(sql_url.removeprefix("sqlite:///"))
    else:
        import psycopg

        conn = psycopg.connect(sql_url, autocommit=True)
    try:
        return {t: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}").fetchall())
                for t in ("usage_hourly", "usage_daily")}
    finally:
        conn.close()


def _awkward(n: int) -> list:
    """Costs that fit nano-units and costs that do not (more decimals, too large), none;
    tag keys with quotes and backslashes; the finer token kinds."""
    import random
    from decimal import Decimal

    from usageledger.records import UsageRecord

    rnd = random.Random(7)
    costs = [None, Decimal("0.000000001"), Decimal("1.0000000001"), Decimal("9" * 12 + ".5"),
             Decimal("0.25")]
    return [UsageRecord(
        f"awk-{i}", T0 + timedelta(minutes=rnd.randrange(3 * 1440)), rnd.choice(["openai", "anthropic"]),
        f"m{i % 2}", 100, 20, 3, 7, 2, rnd.choice(costs), rnd.choice(["USD", "EUR"]),
        rnd.choice([None, "u1", "u2"]), rnd.choice([None, "s1"]), rnd.choice([None, "c1"]),
        tags=rnd.choice([{}, {"env": "prod"}, {'we"ird\\key': "v", "env": "dev"}]),
        cache_write_1h_tokens=3, input_audio_tokens=5, output_image_tokens=4,
    ) for i in range(n)]


def test_rollups_kept_batch_by_batch_equal_a_rebuild_from_the_records(sql_url):
    """The rollups a batch adds (added up in the client of the database) are row for row
    those built from the stored records by the database itself (at open, after a salvage,
    for a reprice): duplicates, every kind of cost, odd tag keys, two currencies."""
    store = create_storage(sql_url)
    store.clear()
    records = _awkward(900) + dataset(1500)
    for i in range(0, len(records), 250):
        store.save_many(records[i:i + 400])  # overlapping batches: every other is a duplicate
    store.close()
    kept = _rollup_rows(sql_url)
    assert len(kept["usage_daily"]) > 100 and len(kept["usage_hourly"]) > 100
    if sql_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(sql_url.removeprefix("sqlite:///")) as conn:
            conn.execute("DROP TABLE usage_hourly")
            conn.execute("DROP TABLE usage_daily")
    else:
        import psycopg

        with psycopg.connect(sql_url, autocommit=True) as conn:
            conn.execute("DROP TABLE usage_hourly")
            conn.execute("DROP TABLE usage_daily")
    store = create_storage(sql_url)  # builds both from the records
    try:
        assert _rollup_rows(sql_url) == kept
    finally:
        store.clear()
        store.close()


def _months_dataset(n: int) -> list:
    """Records over three calendar months (2025-05-20 to 2025-08-10)."""
    import random

    from usageledger.records import UsageRecord

    rnd = random.Random(11)
    start = T0.replace(month=5, day=20, hour=0)
    return [UsageRecord(
        f"mon-{i}", start + timedelta(minutes=rnd.randrange(82 * 1440)), "openai", "m",
        rnd.randrange(100), 3, cost=None if i % 13 == 0 else rnd.choice(
            [__import__("decimal").Decimal("0.003"), __import__("decimal").Decimal("0.25")]),
        currency=rnd.choice(["USD", "EUR"]), user_id=rnd.choice([None, "u1", "u2", "u3"]),
        customer_key=rnd.choice([None, "c1"]), tags=rnd.choice([{}, {"env": "prod"}]),
    ) for i in range(n)]


MONTH_RANGES = [
    (None, None),
    (T0.replace(month=6, day=1, hour=0), None),  # from a month's first instant
    (None, T0.replace(month=7, day=1, hour=0)),
    (T0.replace(month=5, day=27, hour=5), T0.replace(month=8, day=3, hour=7, minute=9)),  # parts of 4
    (T0.replace(month=6, day=3), T0.replace(month=6, day=25)),  # inside one month: days only
    (T0.replace(month=6, day=1, hour=0), T0.replace(month=8, day=1, hour=0)),  # two whole months
]


@pytest.mark.parametrize("since, until", MONTH_RANGES)
def test_totals_over_months_read_month_rows_and_are_exact(sql_url, since, until):
    """Whole months inside a range come from one row per value and month; the days around
    them from the day rows; partial days from the records: the same totals as summing
    the records."""
    from usageledger.storage.aggregate import daily_plan
    from usageledger.storage.filters import make_filters

    records = _months_dataset(4000)
    store = create_storage(sql_url)
    store.clear()
    store.save_many(records)
    reference = MemoryStorage()
    reference.save_many(records)
    f = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
    try:
        for keys in (("user_id",), ("customer_key", "currency"), ("tag:env",), ()):
            got = store.aggregate(keys, **f) if keys else store.aggregate((), user_id="u2", **f)
            want = reference.aggregate(keys, **f) if keys else reference.aggregate((), user_id="u2", **f)
            assert got == want, (keys, f)
        plan = daily_plan(("user_id",), make_filters(**f), months=True)
        whole = since != T0.replace(month=6, day=3)
        assert (plan.months is not None) == whole, plan
    finally:
        store.clear()
        store.close()


def test_an_older_database_gets_its_month_rows_at_open(sql_url):
    store = create_storage(sql_url)
    store.clear()
    store.save_many(_months_dataset(2000))
    store.close()
    before = _rollup_rows(sql_url)
    if sql_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(sql_url.removeprefix("sqlite:///")) as conn:
            gone = conn.execute("DELETE FROM usage_daily WHERE dim LIKE '@%'").rowcount
    else:
        import psycopg

        with psycopg.connect(sql_url, autocommit=True) as conn:
            gone = conn.execute("DELETE FROM usage_daily WHERE dim LIKE '@%'").rowcount
    assert gone > 10
    store = create_storage(sql_url)
    try:
        assert _rollup_rows(sql_url) == before
    finally:
        store.clear()
        store.close()
