"""Alerts exactly once with real collector processes: across a SIGKILL and a restart on
SQLite, and with two collectors on one PostgreSQL receiving the same stream. The webhook
is a real local HTTP server; records come as clients send them, retries included."""

from __future__ import annotations

import threading
import time

import httpx

from tests.budgets.support import delivered, record, wait_until
from tests.server.support import Collector
from tests.support.fault_server import FaultServer

THRESHOLDS = [0.25, 0.5, 0.75, 1.0]





def define(url: str, webhook: str) -> None:
    r = HTTP.put(url + "/api/v1/budgets/team-a", json={
        "scope": {"tags": {"team": "a"}}, "period": "day", "limit": "2.00", "currency": "USD",
        "alert_thresholds": THRESHOLDS, "webhook_url": webhook})
    assert r.status_code == 200, r.text


#: one client for the test's requests: making an httpx client costs ~0.3 s on a loaded box
HTTP = httpx.Client(timeout=30)


def post(url: str, batch: list[dict]) -> bool:
    try:
        return HTTP.post(url + "/api/v1/track", json={"tracked": batch}).status_code == 200
    except httpx.HTTPError:
        return False


def test_alerts_once_across_collector_sigkill_and_restart(tmp_path):
    storage = f"sqlite:///{tmp_path}/usage.db"
    journal = tmp_path / "alerts.journal"
    # 40 batches of 0.05 (in scope) plus noise out of scope: 2.00 in all, every threshold
    batches = [[record(cost="0.05", tags={"team": "a"}), record(cost="1", tags={"team": "b"})] for _ in range(40)]
    with FaultServer() as srv:
        col = Collector(storage, log_path=tmp_path / "collector.log",
                        extra_args=["--alert-journal", str(journal)]).start()
        define(col.url, srv.url + "/hook")
        sent = 0
        for batch in batches[:25]:  # 1.25: thresholds 0.25 and 0.5 crossed
            assert post(col.url, batch)
            sent += 1
            time.sleep(0.02)
        killer = threading.Timer(0.05, col.kill)  # lands while the stream goes on
        killer.start()
        while sent < 32 and post(col.url, batches[sent]):
            sent += 1
        killer.join()
        col.kill()
        col.start()
        # the client resends everything it is not sure of (from before the kill, too)
        for batch in batches[20:]:
            assert post(col.url, batch)
        assert wait_until(lambda: len(delivered(srv)) >= len(THRESHOLDS))
        time.sleep(2.0)  # a duplicate would have been sent by now
        got = delivered(srv)
        assert sorted(a["threshold"] for a in got) == THRESHOLDS
        assert len(srv.requests) == len(THRESHOLDS)  # one POST each, nothing resent
        status = HTTP.get(col.url + "/api/v1/budgets/team-a").json()
        assert status["spent"] == "2" and status["exceeded"] is True
        col.stop()


def test_two_collectors_on_one_postgres_send_each_alert_once(tmp_path, pg_url):
    batches = [[record(cost="0.05", tags={"team": "a"}) for _ in range(2)] for _ in range(20)]
    with FaultServer() as srv, \
            Collector(pg_url, extra_args=["--alert-journal", str(tmp_path / "a.journal")]) as a, \
            Collector(pg_url, extra_args=["--alert-journal", str(tmp_path / "b.journal")]) as b:
        define(a.url, srv.url + "/hook")
        # the replica that did not take the PUT sees the budget: it lives in the database
        assert HTTP.get(b.url + "/api/v1/budgets/team-a").status_code == 200
        for batch in batches:  # every batch goes to both replicas at once
            threads = [threading.Thread(target=post, args=(c.url, batch)) for c in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.05)
        assert wait_until(lambda: len(delivered(srv)) >= len(THRESHOLDS))
        time.sleep(2.0)
        assert sorted(x["threshold"] for x in delivered(srv)) == THRESHOLDS
        assert len(srv.requests) == len(THRESHOLDS)
        assert HTTP.get(b.url + "/api/v1/budgets/team-a").json()["spent"] == "2"
