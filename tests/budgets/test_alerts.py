"""Budget alerts exactly once, delivered through our journal and dispatcher to a real
local HTTP server (tests/support/fault_server.py): a webhook that is down gets them later,
one that keeps refusing ends dead-lettered (shown by `usageledger failed`), and a Meter
sends its own."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.budgets.support import delivered, wait_until
from tests.support.fault_server import FaultServer
from usageledger import Meter
from usageledger.budgets import Budgets
from usageledger.budgets.alerts import AlertSender
from usageledger.cli import main
from usageledger.records import make_usage_record
from usageledger.storage import create_storage

FIELDS = {"budget", "threshold", "spent", "limit", "currency", "window_start", "window_end", "scope"}


def spend(store, cost: str, n: int = 1, **kw) -> None:
    store.save_many([make_usage_record("openai", "gpt-4o", 1, 1, cost=Decimal(cost),
                                       timestamp=datetime.now(UTC), **kw) for _ in range(n)])




def test_webhook_down_then_up_gets_each_alert_once(tmp_path, store):
    with FaultServer() as srv:
        srv.script(srv.status(503), srv.reset(), srv.retry_after(0.2, 503), srv.status(502))
        sender = AlertSender(tmp_path / "alerts.journal", base_delay=0.05, max_backoff=0.5)
        budgets = Budgets(store, alerts=sender)
        budgets.set("u1", limit="1.00", period="day", user_id="u1", alert_thresholds=[0.5, 0.8, 1.0],
                    webhook_url=srv.url + "/hook")
        spend(store, "0.30", user_id="u1")
        assert budgets.evaluate() == []
        spend(store, "0.30", user_id="u1")
        spend(store, "5", user_id="u2")  # not in scope
        assert [a["threshold"] for a in budgets.evaluate()] == [0.5]
        spend(store, "0.45", user_id="u1")
        assert [a["threshold"] for a in budgets.evaluate()] == [0.8, 1.0]
        for _ in range(3):  # evaluating again (another batch, a restart) claims nothing
            assert budgets.evaluate(previous=True) == []
        assert wait_until(lambda: len(delivered(srv)) >= 3)
        time.sleep(1.0)  # retries that would duplicate have had their time
        got = delivered(srv)
        assert sorted(a["threshold"] for a in got) == [0.5, 0.8, 1.0]
        assert all(set(a) == FIELDS for a in got)
        last = next(a for a in got if a["threshold"] == 1.0)
        assert (last["spent"], last["limit"], last["currency"], last["scope"]) == ("1.05", "1.00", "USD", {"user_id": "u1"})
        assert last["window_start"] == datetime.now(UTC).strftime("%Y-%m-%dT00:00:00Z")
        with srv.lock:
            failed = [r for r in srv.requests if r.status != 200]
            keys = [r.headers.get("Idempotency-Key") for r in srv.requests if r.status == 200]
        assert len(failed) == 4  # the webhook really was down for a while
        assert sorted(keys) == sorted(f"u1|{last['window_start']}|{t}" for t in ("0.5", "0.8", "1"))
        sender.close()


def test_webhook_that_keeps_refusing_ends_dead_lettered_and_shown_by_failed(tmp_path, capsys):
    store = create_storage(f"sqlite:///{tmp_path}/usage.db")
    journal = tmp_path / "alerts.journal"
    with FaultServer() as srv:
        srv.default = srv.status(410, b'{"detail":"gone"}')
        sender = AlertSender(journal, base_delay=0.05)
        budgets = Budgets(store, alerts=sender)
        budgets.set("all", limit="1", period="month", alert_thresholds=[1], webhook_url=srv.url + "/gone")
        spend(store, "2")
        assert len(budgets.evaluate()) == 1
        assert wait_until(lambda: sender.stats()["dead"] == 1)
        sender.close()
        assert len(srv.requests) == 1  # refused for good: not retried
    assert main(["failed", str(journal), "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert len(items) == 1 and items[0]["kind"] == "alert"
    assert "HTTP 410" in items[0]["last_error"]
    assert items[0]["payload"]["body"]["budget"] == "all" and items[0]["payload"]["url"] == srv.url + "/gone"
    store.close()


def test_webhook_failing_past_max_attempts_is_dead_lettered(tmp_path):
    store = create_storage("memory")
    with FaultServer() as srv:
        srv.default = srv.status(503)
        sender = AlertSender(None, base_delay=0.01, max_backoff=0.05, max_attempts=3)
        budgets = Budgets(store, alerts=sender)
        budgets.set("all", limit="1", period="day", alert_thresholds=[0.5], webhook_url=srv.url)
        spend(store, "1")
        budgets.evaluate()
        assert wait_until(lambda: sender.stats()["dead"] == 1)
        assert len(srv.requests) == 3
        sender.close()


def test_claim_left_unqueued_by_a_dead_process_is_sent_by_reclaim(tmp_path):
    store = create_storage(f"sqlite:///{tmp_path}/usage.db")
    with FaultServer() as srv:
        # a process claimed the alert and died before queueing it
        delivery = {"url": srv.url, "key": "b|total|1", "body": {"budget": "b"}, "budget": "b",
                    "window_start": "total", "threshold": "1"}
        assert store.claim_alert("b", "total", "1", delivery) is True
        assert store.claim_alert("b", "total", "1", delivery) is False
        sender = AlertSender(None, base_delay=0.05)
        budgets = Budgets(store, alerts=sender, reclaim_after_s=0.2)
        assert budgets.reclaim() == 0  # too recent: its claimer may still be queueing it
        time.sleep(0.3)
        assert budgets.reclaim() == 1
        assert budgets.reclaim() == 0  # queued now
        assert wait_until(lambda: len(delivered(srv)) == 1)
        sender.close()
    store.close()


def test_meter_budgets_send_alerts_once_as_records_are_stored(tmp_path):
    with FaultServer() as srv, Meter(storage="sqlite", db_path=tmp_path / "usage.db") as meter:
        meter.budgets.set("u1", limit="0.10", period="day", user_id="u1", alert_thresholds=[0.5, 1],
                          webhook_url=srv.url)
        for _ in range(4):
            meter.record("openai", "gpt-4o", 10, 10, cost="0.03", user_id="u1")
        assert meter.budgets.check(user_id="u1")["allowed"] is False
        assert wait_until(lambda: len(delivered(srv)) >= 2)
        time.sleep(0.5)
        assert sorted(a["threshold"] for a in delivered(srv)) == [0.5, 1.0]
        # delivered from a journal file of their own, beside the meter's
        journal = meter.budgets.alerts.journal_path
        assert journal.parent == tmp_path and journal.name.endswith(".alerts.journal") and journal.exists()


@pytest.mark.parametrize("kind", ["jsonl"])
def test_meter_budgets_over_a_store_without_budget_tables(tmp_path, kind):
    with Meter(storage=kind, path=tmp_path / "u.jsonl") as meter:
        meter.budgets.set("x", limit="0.05", period="total")
        meter.record("openai", "gpt-4o", 1, 1, cost="0.05")
        assert meter.budgets.check()["exceeded"] == ["x"]


def test_split_stream_across_two_replicas_alerts_once_by_the_sweep(tmp_path):
    """Each replica notes only the records it stored, so neither sees the whole spend
    from its notes; the periodic sweep reads the store afresh and one of them claims."""
    from usageledger.budgets import AlertLoop

    url = f"sqlite:///{tmp_path}/usage.db"
    stores = [create_storage(url), create_storage(url)]
    with FaultServer() as srv:
        senders = [AlertSender(None, base_delay=0.05) for _ in stores]
        replicas = [Budgets(s, alerts=a) for s, a in zip(stores, senders, strict=True)]
        replicas[0].set("all", limit="1", period="day", alert_thresholds=[0.5, 1], webhook_url=srv.url)
        loops = [AlertLoop(b, interval=0.05, sweep_every=0.5) for b in replicas]
        for loop in loops:
            loop.start()
        for i in range(20):  # 0.05 each, alternately stored by one replica then the other
            rec = make_usage_record("openai", "gpt-4o", 1, 1, cost=Decimal("0.05"), timestamp=datetime.now(UTC))
            new = stores[i % 2].save_many([rec])
            loops[i % 2].note([rec] if rec.id in new else [])
        assert wait_until(lambda: len(delivered(srv)) >= 2)
        time.sleep(1.5)  # three more sweeps on each replica
        for loop in loops:
            loop.stop()
        assert sorted(a["threshold"] for a in delivered(srv)) == [0.5, 1.0]
        assert len(srv.requests) == 2
        for a in senders:
            a.close()
    for s in stores:
        s.close()
