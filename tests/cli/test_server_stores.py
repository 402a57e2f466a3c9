"""report and export/import through the same contract on PostgreSQL and Redis."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from tests.cli.conftest import totals, usage_records
from usageledger.pricebook import PriceBook
from usageledger.storage import create_storage


@pytest.fixture
def pg_url(postgres_server):
    import psycopg

    name = f"ul_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def redis_url(redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/9"  # a database of its own
    yield url
    import redis

    redis.Redis.from_url(url).flushdb()


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_report_and_round_trip(cli, tmp_path, request, kind):
    url = request.getfixturevalue("pg_url" if kind == "postgres" else "redis_url")
    store = create_storage(url)
    store.save_many(usage_records())
    store.close()
    want = totals(usage_records())

    r = cli("report", "--storage", url, "--format", "json", "--group-by", "day")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert [row["day"] for row in doc["rows"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert doc["total"]["count"] == want["count"]
    assert Decimal(doc["total"]["cost"]) == want["cost"]

    r = cli("report", "--storage", url)
    assert r.code == 0 and "cost per day" in r.out and "total" in r.out

    out = tmp_path / "usage.jsonl"
    r = cli("export", "--storage", url, "--format", "jsonl", "--out", out)
    assert r.code == 0 and "exported 31 records" in r.err
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    assert cli("import", out, "--storage", target).code == 0
    a, b = create_storage(url), create_storage(target)
    try:
        # every record back as it was, except those stored without a cost: the import
        # prices them as the collector prices a posted record
        book = PriceBook(b)
        assert {r.id: r for r in b.iter_records()} == {r.id: book.price(r) for r in a.iter_records()}
        assert any(r.cost is None for r in a.iter_records())
        assert all(r.cost is not None for r in b.iter_records() if r.model == "gpt-4o")
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("storage", ["memory://", "jsonl:///tmp/x.jsonl"])
def test_serve_workers_refuses_a_store_each_process_would_keep_apart(cli, storage):
    r = cli("serve", "--storage", storage, "--workers", "2", "--port", "1")
    assert r.code != 0
    assert "--workers 2" in r.err and storage in r.err and "sqlite:///" in r.err
