"""An outage is not a reason to give up: transient failures retry until max_retry_age,
the dispatcher probes a failing destination with one batch at a time, and the backlog
flows at once when it answers again (real HTTP against tests/support/fault_server)."""

from __future__ import annotations

import time

import pytest

from tests.support.fault_server import FaultServer
from usageledger.delivery import PersistentDelivery
from usageledger.journal import SqliteJournal

# a 150 s outage on a time scale 25 times shorter: the backoff settings shrink with it
SCALE = 25
OUTAGE = 150 / SCALE
BASE = 0.5 / SCALE
CAP = 60 / SCALE
GROWTH = 1.5


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def record(i: int) -> dict:
    return {"api_id": "openai", "service_key": "gpt-4o", "payload": {"n": i}}


def requests_between(server: FaultServer, t0: float, t1: float) -> list[float]:
    return [r.time for r in server.requests if t0 <= r.time < t1]


def test_a_long_outage_dead_letters_nothing_probes_sparingly_and_recovers_at_once(tmp_path, server):
    d = PersistentDelivery(db_path=tmp_path / "q.db", api_base=server.url, batch_interval=0.02,
                           immediate_pause_seconds=BASE, max_backoff=CAP, timeout=5)
    try:
        ids = [d.enqueue(record(i)) for i in range(100)]
        assert d.flush(10)
        server.default = server.status(503)
        start = time.time()
        ids += [d.enqueue(record(i)) for i in range(100, 600)]
        time.sleep(OUTAGE / 2)
        ids += [d.enqueue(record(i)) for i in range(600, 1000)]
        time.sleep(max(start + OUTAGE - time.time(), 0))
        server.default = server.ok()
        end = time.time()
        assert server.wait_for(len(ids), 30), d.stats()
        recovered = time.time() - end
        during = requests_between(server, start, end)
        s = d.stats()
    finally:
        d.stop(5)
    assert s["dead"] == 0, SqliteJournal(tmp_path / "q.db").items("dead", 3)
    assert set(ids) <= server.stored_ids()
    # one probe at a time, its interval growing by half up to CAP: the probes until the cap,
    # then one per CAP, plus the batches already in flight when the outage began
    steps = 0
    interval = BASE
    while interval < CAP:
        interval *= GROWTH
        steps += 1
    bound = steps + OUTAGE / CAP + 3
    assert len(during) <= bound, f"{len(during)} requests during a {OUTAGE:g}s outage (bound {bound:.0f})"
    # the first probe after the end comes within one probe interval (at most CAP); the
    # backlog follows at full speed (a wide margin for sending 900 records on a loaded box)
    first_after = min(r.time for r in server.requests if r.time >= end)
    assert first_after - end <= CAP + 1.0, f"first request {first_after - end:.1f}s after the end"
    assert recovered <= CAP + 4.0, f"backlog delivered {recovered:.1f}s after the outage ended"


def test_a_short_outage_backlog_flows_within_the_probe_interval(tmp_path, server):
    # defaults except the batch interval: a 3 s outage is over before the probe interval
    # outgrows 1.7 s (0.5 s growing by half), so the backlog must arrive within that
    d = PersistentDelivery(db_path=tmp_path / "q.db", api_base=server.url, batch_interval=0.05)
    try:
        server.default = server.status(503)
        ids = [d.enqueue(record(i)) for i in range(1000)]
        time.sleep(3.0)
        server.default = server.ok()
        end = time.time()
        assert server.wait_for(len(ids), 30), d.stats()
        recovered = time.time() - end
    finally:
        d.stop(5)
    # within the probe interval plus a margin for a loaded box (the previous per-record
    # backoffs took 7.4 s here)
    assert recovered <= 1.7 + 3.0, f"backlog delivered {recovered:.1f}s after the outage ended"


def test_retry_after_spaces_the_probes(tmp_path, server):
    d = PersistentDelivery(db_path=tmp_path / "q.db", api_base=server.url, batch_interval=0.02,
                           immediate_pause_seconds=0.02, max_backoff=0.1)
    try:
        server.default = server.retry_after(1.0, code=503)
        start = time.time()
        ids = [d.enqueue(record(i)) for i in range(300)]
        time.sleep(3.5)
        server.default = server.ok()
        end = time.time()
        assert server.wait_for(len(ids), 30)
    finally:
        d.stop(5)
    during = requests_between(server, start, end)
    gaps = [b - a for a, b in zip(during[1:], during[2:], strict=False)]  # after the first failure
    assert len(during) <= 6 and all(g >= 0.9 for g in gaps), (len(during), gaps)


def test_records_older_than_max_retry_age_and_refusals_are_dead_lettered(tmp_path, server):
    d = PersistentDelivery(db_path=tmp_path / "q.db", api_base=server.url, batch_interval=0.02,
                           immediate_pause_seconds=0.02, max_backoff=0.1, max_retry_age="1s")
    try:
        server.default = server.status(503)
        old = [d.enqueue(record(i)) for i in range(20)]
        deadline = time.monotonic() + 20
        while d.stats()["dead"] < 20:
            assert time.monotonic() < deadline, d.stats()
            time.sleep(0.05)
        dead = SqliteJournal(tmp_path / "q.db").items("dead", 50)
        assert {r["id"] for r in dead} == set(old)
        assert all("max_retry_age=1s" in r["last_error"] and "HTTP 503" in r["last_error"] for r in dead)
        # a refusal (4xx other than 408/425/429) dead-letters at once, whatever the age
        server.default = server.reject_ids(lambda rec: rec["payload"]["n"] == 7, "bad record")
        fresh = [d.enqueue(record(i)) for i in range(5, 10)]
        assert d.flush(10)
        assert d.stats()["dead"] == 21
        assert set(fresh) - server.stored_ids() == {fresh[2]}
    finally:
        d.stop(5)
