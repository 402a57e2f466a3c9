"""The Collector (the ingestion rules behind the routes) on its own, over a real storage:
dedup accounting, pricing, the answer, run sequences; and what it does not pull in."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from tests.server.support import record
from usageledger.records import make_usage_record
from usageledger.server.collector import Collector
from usageledger.server.wire import Refused, RunItem
from usageledger.storage import create_storage

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _store(tmp_path):
    return create_storage(f"sqlite:///{tmp_path / 'c.db'}")


def test_ingest_counts_copies_and_refusals(tmp_path):
    store = _store(tmp_path)
    try:
        seen: list[tuple[int, set[str]]] = []
        c = Collector(store, on_stored=lambda recs, new: seen.append((len(recs), set(new))))
        a = make_usage_record("openai", "gpt-4o", 1, 1, cost="0.1", timestamp=AT, id="a")
        b = make_usage_record("openai", "gpt-4o", 1, 1, cost="0.2", timestamp=AT, id="b")
        assert c.ingest([a, b]) == {"accepted": 2, "duplicate": 0, "duplicate_ids": []}
        # a copy inside the batch and one of an id stored before: both duplicates
        d = make_usage_record("openai", "gpt-4o", 1, 1, cost="0.3", timestamp=AT, id="d")
        assert c.ingest([a, d, d]) == {"accepted": 1, "duplicate": 2, "duplicate_ids": ["a", "d"]}
        answer = c.ingest([Refused("x", "model is required"), b])
        assert answer == {"accepted": 0, "duplicate": 1, "rejected": 1, "results": [
            {"id": "x", "status": "rejected", "error": "model is required"},
            {"id": "b", "status": "duplicate"}]}
        assert seen == [(2, {"a", "b"}), (3, {"d"}), (1, set())]
        assert store.aggregate(())[0]["cost"] == Decimal("0.6")
    finally:
        store.close()


def test_ingest_body_prices_records_without_cost(tmp_path):
    store = _store(tmp_path)
    try:
        c = Collector(store)
        body = msgspec.json.encode({"tracked": [record(0, cost=None, model="gpt-4o")]})
        assert c.ingest_body(body)["accepted"] == 1
        (stored,) = store.query()
        assert stored.cost is not None and stored.cost == c.prices.cost(stored)[0]
        unpriced = Collector(store, price=False)
        assert unpriced.ingest_body(msgspec.json.encode({"tracked": [record(1, cost=None)]}))["accepted"] == 1
        assert sorted((r.cost is None) for r in store.query()) == [False, True]
    finally:
        store.close()


def test_runs_without_seq_go_on_top(tmp_path):
    store = _store(tmp_path)
    try:
        c = Collector(store)
        fields = {"agent_name": "a", "job_type": "j", "status": "running"}
        assert c.create_run("run-1", None, fields) == "created"
        assert c.patch_run("run-1", None, {"status": "success"}) == "updated"
        assert store.get_run("run-1")["seq"] == 1
        assert c.patch_run("run-2", None, {"status": "success"}) == "missing"
        out = c.apply_runs([
            RunItem("w1", "run-1", None, False, {"items_failed": 1}),
            RunItem("w2", "run-1", None, False, {"items_failed": 2}),
            RunItem("w3", error="run_id is required"),
            RunItem("w4", "run-1", 1, False, {"items_failed": 9}),
        ])
        assert [r["status"] for r in out] == ["updated", "updated", "rejected", "stale"]
        run = store.get_run("run-1")
        assert (run["seq"], run["items_failed"]) == (3, 2)
    finally:
        store.close()


def test_collector_needs_no_web_framework_and_no_client_telemetry():
    """``usageledger import`` uses the Collector without the server extra; the collector
    app never imports the client's telemetry package (the run schema is shared)."""
    code = ("import sys; import usageledger.server.collector, usageledger.cli; "
            "assert 'fastapi' not in sys.modules and 'starlette' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    code = ("import sys; import usageledger.server.app; "
            "bad = sorted(m for m in sys.modules if m.startswith('usageledger.telemetry')); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_telemetry_models_are_the_run_schema():
    """The old import path gives the very same classes (not copies)."""
    from usageledger import runs
    from usageledger.telemetry import models

    for name in runs.__all__:
        assert getattr(models, name) is getattr(runs, name), name
    assert models.RunWrite is runs.RunWrite


def test_price_many_gives_the_costs_of_price(tmp_path):
    """The batch pricing (lookups once per provider, model and day) gives every record the
    very cost ``price`` gives it: overrides changing from one day to the next, an alias,
    the table's fixed prices and its service tiers, a table price with a start date (its
    tiers end on 2026-03-13) and unknown models."""
    from datetime import timedelta

    from usageledger.pricebook import PriceBook, entry_json, parse_price

    store = _store(tmp_path)
    try:
        for body in ({"input_per_mtok": "1", "output_per_mtok": "2"},
                     {"input_per_mtok": "5", "output_per_mtok": "7", "currency": "EUR",
                      "effective_from": "2026-03-12"}):
            day, entry = parse_price(body)
            store.put_price("acme", "house", day, entry_json(entry))
        store.put_alias("acme", "house-prod", "house")
        book = PriceBook(store)
        recs = []
        start = datetime(2026, 3, 11, 20, tzinfo=UTC)
        for i in range(240):
            at = start + timedelta(minutes=37 * i)  # crosses 2026-03-12 and 2026-03-13
            provider, model = (("acme", "house"), ("acme", "house-prod"), ("openai", "gpt-4o"),
                               ("anthropic", "claude-sonnet-4-6"), ("nobody", "unknown"))[i % 5]
            recs.append(make_usage_record(provider, model, 150_000 + 1000 * i, 300 + i,
                                          cache_read_tokens=90_000, timestamp=at,
                                          cost="0.01" if i % 17 == 0 else None,
                                          service_tier=(None, "batch", "priority")[i % 3]))
        expected = [book.price(r) for r in recs]
        assert book.price_many(recs) == expected
        sonnet = {e.cost for e in expected if e.model == "claude-sonnet-4-6" and e.input_tokens + 90_000 > 200_000}
        assert len(sonnet) > 1  # the tiers before the start date and the flat price after
        assert {e.currency for e in expected if e.provider == "acme"} == {"USD", "EUR"}
    finally:
        store.close()
