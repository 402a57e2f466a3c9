"""Several processes writing the same records at once (2 on one SQLite file, 4 on one
PostgreSQL database): each id is stored once, totals are exact, and the rollups (hourly,
and daily per user, customer, session and tag) agree with the records themselves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from tests.storage.writer import dataset
from usageledger.storage import create_storage
from usageledger.storage.memory import MemoryStorage

ROOT = Path(__file__).parents[2]
#: aggregates that the rollups answer (checked below with explain_aggregate)
ROLLED_UP = [("day", "model"), ("user_id",), ("customer_key",), ("session_id",), ("tag:env",),
             ("tag:team",), ("day", "user_id"), ("day", "tag:env")]


def _write_concurrently(url: str, writers: int) -> list[list[str]]:
    start_at = time.time() + 3.0  # every writer has opened its store by then
    procs = [subprocess.Popen([sys.executable, "-m", "tests.storage.writer", url, str(seed), str(start_at)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in range(writers)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout))
    return out


def _check(url: str, news: list[list[str]]) -> None:
    records = dataset()
    every = [i for new in news for i in new]
    assert len(every) == len(set(every)), "an id was reported new by two writers"
    assert set(every) == {r.id for r in records}
    reference = MemoryStorage()
    reference.save_many(records)
    store = create_storage(url)
    try:
        assert store.count() == len(records)
        totals = store.aggregate(())  # one row per currency: money never adds across them
        for cur in {r.currency for r in records}:
            (row,) = [t for t in totals if t["currency"] == cur]
            assert row["cost"] == sum((r.cost for r in records if r.cost is not None
                                       and r.currency == cur), Decimal(0)), cur
        assert sum(t["count"] for t in totals) == len(records)
        assert sum(t["input_tokens"] for t in totals) == sum(r.input_tokens for r in records)
        for keys in ROLLED_UP:
            assert store.aggregate(keys) == reference.aggregate(keys), keys
            plan = "\n".join(store.explain_aggregate(keys))
            assert "usage_hourly" in plan or "usage_daily" in plan, plan
        since, until = records[0].timestamp, records[-1].timestamp  # unaligned bounds
        since, until = min(since, until), max(since, until)
        for keys in (("user_id",), ("tag:env",), ("day", "customer_key")):
            assert (store.aggregate(keys, since=since, until=until)
                    == reference.aggregate(keys, since=since, until=until)), keys
    finally:
        store.close()


def test_two_processes_on_one_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    create_storage(url).close()  # the schema, before the race
    _check(url, _write_concurrently(url, 2))


@pytest.fixture
def pg_db(postgres_server):
    import psycopg

    name = f"ul_conc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_four_processes_on_one_postgres_database(pg_db):
    _check(pg_db, _write_concurrently(pg_db, 4))
