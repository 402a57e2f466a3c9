"""Prices on the collector (/api/v1/prices) in memory, SQLite, JSONL, PostgreSQL and Redis:
effective dating, aliases, provider-reported costs kept, exact Decimal results, 400 naming
the field, prices that outlive the process."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from tests.server.support import record
from usageledger.pricebook import PriceBook
from usageledger.pricing import calculate_cost
from usageledger.server import create_app
from usageledger.storage import create_storage

LOCAL = ("127.0.0.1", 40000)
PRICE_STORES = ["memory", "sqlite", "jsonl", "postgres", "redis"]


def _open(kind: str, request, tmp_path):
    if kind == "memory":
        return create_storage("memory")
    if kind == "sqlite":
        return create_storage(f"sqlite:///{tmp_path}/usage.db")
    if kind == "jsonl":
        return create_storage("jsonl", path=tmp_path / "usage.jsonl")
    if kind == "postgres":
        return create_storage(request.getfixturevalue("pg_url"))
    prefix = request.node.__dict__.setdefault("_redis_prefix", f"ul-prices-{uuid.uuid4().hex[:10]}:")
    return create_storage(request.getfixturevalue("redis_server").url, prefix=prefix)


@pytest.fixture(params=PRICE_STORES)
def store(request, tmp_path):
    """Every backend that keeps prices (this module's own: the reprice job below runs on
    the backends that reprice)."""
    s = _open(request.param, request, tmp_path)
    yield s
    s.close()


def test_prices_outlive_the_process(request, tmp_path, store):
    """What one process put is what the next one reads (memory aside: nothing survives)."""
    kind = request.node.callspec.params["store"]
    if kind == "memory":
        return
    from usageledger.pricebook import entry_json, parse_price

    day, entry = parse_price({"input_per_mtok": "0.4", "output_per_mtok": "1.6",
                              "cache_write_1h_per_mtok": "0.8", "effective_from": "2026-01-05"})
    store.put_price("openai", "ft-a", day, entry_json(entry))
    store.put_price("openai", "ft-a", "", entry_json(parse_price({"input_per_mtok": "1", "output_per_mtok": "2"})[1]))
    store.put_price("openai", "ft-b", "", entry_json(entry))
    assert store.delete_price("openai", "ft-b", "") and not store.delete_price("openai", "ft-b", "")
    store.put_alias("azure", "prod", "ft-a")
    store.put_alias("azure", "gone", "ft-a")
    assert store.delete_alias("azure", "gone") and not store.delete_alias("azure", "gone")
    store.clear()  # usage goes, prices are configuration and stay
    store.close()
    again = _open(kind, request, tmp_path)
    try:
        assert [(e["model"], e["effective_from"], e["input_per_mtok"]) for e in again.list_prices()] == [
            ("ft-a", None, "1"), ("ft-a", "2026-01-05", "0.4")]
        assert again.list_prices()[1]["cache_write_1h_per_mtok"] == "0.8"
        assert again.list_aliases() == [{"provider": "azure", "name": "prod", "model": "ft-a"}]
    finally:
        again.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store, api_keys=["k"]), client=LOCAL,
                    headers={"Authorization": "Bearer k"}) as c:
        yield c


def costs(store) -> dict[str, tuple[Decimal | None, str]]:
    return {r.id: (r.cost, r.currency) for r in store.query()}


def track(client, *recs):
    r = client.post("/api/v1/track", json={"tracked": list(recs)})
    assert r.status_code == 200, r.text
    return [x["id"] for x in recs]


def test_effective_dating_before_and_after(client, store):
    old = {"input_per_mtok": "1.10", "output_per_mtok": "4.40", "cache_read_per_mtok": "0.275",
           "cache_write_per_mtok": "1.10", "currency": "USD"}
    new = {**old, "input_per_mtok": "0.80", "output_per_mtok": "3.20", "per_request": "0.0001",
           "effective_from": "2025-03-10"}
    assert client.put("/api/v1/prices/openai/my-ft", json=old).status_code == 200
    r = client.put("/api/v1/prices/OpenAI/my-ft", json=new)
    assert r.status_code == 200, r.text
    assert [e["effective_from"] for e in r.json()["history"]] == [None, "2025-03-10"]
    before = record(0, model="my-ft", cost=None, timestamp="2025-03-09T23:59:59.999999Z",
                    input_tokens=1000, output_tokens=200, cache_read_tokens=3000)
    at = record(0, model="my-ft", cost=None, timestamp="2025-03-10T00:00:00Z",
                input_tokens=1000, output_tokens=200, cache_read_tokens=3000)
    later = record(0, model="my-ft", cost=None, timestamp="2025-09-01T08:00:00+02:00",
                   input_tokens=7, output_tokens=3)
    a, b, c = track(client, before, at, later)
    got = costs(store)
    assert got[a] == (Decimal("0.002805"), "USD")  # (1000*1.10 + 200*4.40 + 3000*0.275) / 1e6
    assert got[b] == (Decimal("0.002365"), "USD")  # (800 + 640 + 3000*0.275)/1e6 + 0.0001 per request
    assert got[c] == (Decimal("0.0001152"), "USD")  # (7*0.80 + 3*3.20)/1e6 + 0.0001
    # deleting the dated entry: what follows is priced from the first one again
    assert client.delete("/api/v1/prices/openai/my-ft?effective_from=2025-03-10").status_code == 200
    d, = track(client, {**later, "id": "after-delete"})
    assert costs(store)[d] == (Decimal("0.0000209"), "USD")  # (7*1.10 + 3*4.40)/1e6
    listed = client.get("/api/v1/prices").json()
    assert [(e["provider"], e["model"], e["effective_from"], e["input_per_mtok"]) for e in listed["prices"]] == [
        ("openai", "my-ft", None, "1.10")]


def test_alias_and_reported_cost_and_table(client, store):
    r = client.put("/api/v1/prices/aliases/azure/prod-gpt4o", json={"model": "gpt-4o-2024-08-06"})
    assert r.status_code == 200, r.text
    via_alias = record(0, provider="azure", model="prod-gpt4o", cost=None, input_tokens=1000, output_tokens=100)
    reported = record(1, provider="azure", model="prod-gpt4o", cost="0.123456789", currency="EUR")
    unknown = record(2, provider="azure", model="nobody-knows", cost=None)
    a, b, c = track(client, via_alias, reported, unknown)
    table = calculate_cost("gpt-4o-2024-08-06", 1000, 100, provider="azure")
    assert table is not None and table > 0
    got = costs(store)
    assert got[a] == (table, "USD")
    assert got[b] == (Decimal("0.123456789"), "EUR")  # the provider's own cost is kept
    assert got[c][0] is None
    # an override of the alias' target wins over the table for the alias too
    client.put("/api/v1/prices/azure/gpt-4o-2024-08-06", json={"input_per_mtok": "2", "output_per_mtok": "8",
                                                               "currency": "EUR"})
    d, = track(client, {**via_alias, "id": "again"})
    assert costs(store)[d] == (Decimal("0.0028"), "EUR")
    assert client.get("/api/v1/prices").json()["aliases"] == [
        {"provider": "azure", "name": "prod-gpt4o", "model": "gpt-4o-2024-08-06"}]


def test_reasoning_price(client, store):
    client.put("/api/v1/prices/openai/thinker", json={"input_per_mtok": "1", "output_per_mtok": "4",
                                                      "reasoning_per_mtok": "10"})
    a, = track(client, record(0, model="thinker", cost=None, input_tokens=10, output_tokens=100,
                              reasoning_tokens=60))
    assert costs(store)[a] == (Decimal("0.00077"), "USD")  # (10*1 + 40*4 + 60*10)/1e6


@pytest.mark.parametrize(("body", "field"), [
    ({"output_per_mtok": "1"}, "input_per_mtok"),
    ({"input_per_mtok": "-1", "output_per_mtok": "1"}, "input_per_mtok"),
    ({"input_per_mtok": "1", "output_per_mtok": 1.5}, "output_per_mtok"),
    ({"input_per_mtok": "1", "output_per_mtok": "x"}, "output_per_mtok"),
    ({"input_per_mtok": "1", "output_per_mtok": "1", "effective_from": "2025-13-01"}, "effective_from"),
    ({"input_per_mtok": "1", "output_per_mtok": "1", "currency": ""}, "currency"),
    ({"input_per_mtok": "1", "output_per_mtok": "1", "price": "1"}, "price"),
])
def test_bad_input_is_400_naming_the_field(client, store, body, field):
    r = client.put("/api/v1/prices/openai/m", json=body)
    assert r.status_code == 400 and field in r.json()["detail"], r.text
    assert client.get("/api/v1/prices").json()["prices"] == []


def test_bad_alias_and_missing_entries(client, store):
    assert client.put("/api/v1/prices/aliases/azure/x", json={"name": "y"}).status_code == 400
    assert client.get("/api/v1/prices/openai/none").status_code == 404
    assert client.delete("/api/v1/prices/openai/none").status_code == 404
    assert client.delete("/api/v1/prices/aliases/openai/none").status_code == 404


def test_replicas_see_changes_within_the_cache(store):
    """Two price books on one store (two collector replicas): a change made through one
    is used by the other once its cache (here 0 s) has expired."""
    from usageledger.pricebook import entry_json, parse_price
    from usageledger.records import make_usage_record

    other = PriceBook(store, cache_s=0)
    rec = make_usage_record("openai", "ft-x", 1_000_000)
    assert other.price(rec).cost is None
    store.put_price("openai", "ft-x", "", entry_json(parse_price({"input_per_mtok": "3", "output_per_mtok": "3"})[1]))
    assert other.price(rec).cost == Decimal("3")
    cached = PriceBook(store, cache_s=3600)
    assert cached.price(rec).cost == Decimal("3")
    store.delete_price("openai", "ft-x", "")
    assert cached.price(rec).cost == Decimal("3")  # still within its cache
    cached.refresh()
    assert cached.price(rec).cost is None


def test_part_prices_of_an_override(client, store):
    """An override with its own prices for 1-hour cache writes and audio tokens; a record
    of the batch tier takes the override as it is (overrides apply to every tier)."""
    body = {"input_per_mtok": "2", "output_per_mtok": "8", "cache_write_per_mtok": "2.5",
            "cache_write_1h_per_mtok": "4", "input_audio_per_mtok": "40", "output_audio_per_mtok": "80"}
    r = client.put("/api/v1/prices/openai/voice-ft", json=body)
    assert r.status_code == 200, r.text
    assert client.get("/api/v1/prices").json()["prices"][0]["input_audio_per_mtok"] == "40"
    a, = track(client, record(0, model="voice-ft", cost=None, input_tokens=1000, input_audio_tokens=600,
                              output_tokens=300, output_audio_tokens=100, cache_write_tokens=500,
                              cache_write_1h_tokens=200, service_tier="batch"))
    # (400*2 + 600*40 + 200*8 + 100*80 + 300*2.5 + 200*4) / 1e6
    assert costs(store)[a] == (Decimal("0.03595"), "USD")
    got = {r.id: r for r in store.query()}[a]
    assert (got.input_audio_tokens, got.cache_write_1h_tokens, got.service_tier) == (600, 200, "batch")
    bad = client.put("/api/v1/prices/openai/voice-ft", json={**body, "input_audio_per_mtok": "-1"})
    assert bad.status_code == 400 and "input_audio_per_mtok" in bad.json()["detail"]
    refused = client.post("/api/v1/track", json={"tracked": [
        record(1, model="voice-ft", input_tokens=10, input_audio_tokens=11)]}).json()
    assert "input_audio_tokens" in str(refused), refused


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"], indirect=True)
def test_post_reprice_job(client, store):
    import time

    recs = [record(i, model="late-ft", cost=None, input_tokens=1000 + i, output_tokens=i) for i in range(30)]
    ids = track(client, *recs)
    assert all(costs(store)[i][0] is None for i in ids)
    client.put("/api/v1/prices/openai/late-ft", json={"input_per_mtok": "2", "output_per_mtok": "6"})
    r = client.post("/api/v1/reprice", json={"model": "late-ft", "only_unknown": True})
    assert r.status_code == 202, r.text
    job = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while (got := client.get(f"/api/v1/reprice/{job}").json())["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (got["status"], got["seen"], got["changed"]) == ("done", 30, 30), got
    after = costs(store)
    for rec in recs:
        assert after[rec["id"]] == ((rec["input_tokens"] * 2 + rec["output_tokens"] * 6) / Decimal(1_000_000), "USD")
    assert client.post("/api/v1/reprice", json={"since": "yesterday"}).status_code == 400
    assert "only_unknown" in client.post("/api/v1/reprice", json={"only_unknown": "yes"}).json()["detail"]
    assert client.get("/api/v1/reprice/nope").status_code == 404
