"""The dispatcher lease is tied to its holder's life: after SIGKILL a new process
delivers at once; a live but hung holder keeps its timed lease; a process that stops with
sends hung in flight gives their claims back; claims of a dead process cost no attempt."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.core.test_crash import acked, drain, start_producer
from tests.support.fault_server import FaultServer
from usageledger.delivery import PersistentDelivery
from usageledger.journal import SqliteJournal

LEASE = 15.0


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def wait_until(cond, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def holder_pid(journal) -> int | None:
    holder = SqliteJournal(journal).stats()["lease_holder"]
    return None if holder is None else int(holder.split(":")[1])


def test_sigkill_of_the_lease_holder_new_process_delivers_at_once(tmp_path, server):
    journal, out = tmp_path / "q.db", tmp_path / "acked"
    server.default = server.status(503)  # a backlog builds up while the holder dispatches
    proc = start_producer(journal, server.url, out, "--mode", "committed", "--count", "300",
                          "--lease", str(LEASE))
    assert proc.stdout.readline().strip() == "done"
    assert wait_until(lambda: server.requests and holder_pid(journal) == proc.pid, 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.default = server.ok()
    t0 = time.monotonic()
    d = PersistentDelivery(db_path=journal, api_base=server.url, batch_interval=0.02, lease_s=LEASE)
    try:
        assert wait_until(lambda: server.stored_ids(), 30), d.stats()
        first = time.monotonic() - t0
        # the timed lease had at least 2/3 of LEASE left (renewed every LEASE/3)
        assert first < LEASE / 3, f"first delivery after {first:.1f}s: the dead holder's lease was waited out"
        assert d.flush(30)
    finally:
        d.stop(5)
    assert len(acked(out)) == 300 and set(acked(out)) <= server.stored_ids()
    s = SqliteJournal(journal).stats()
    assert s["dead"] == 0 and s["inflight"] == 0


def test_a_live_but_hung_holder_keeps_its_timed_lease(tmp_path, server):
    journal, out = tmp_path / "q.db", tmp_path / "acked"
    lease = 3.0
    server.default = server.status(503)
    proc = start_producer(journal, server.url, out, "--mode", "committed", "--count", "100",
                          "--lease", str(lease))
    assert proc.stdout.readline().strip() == "done"
    assert wait_until(lambda: server.requests and holder_pid(journal) == proc.pid, 20)
    proc.send_signal(signal.SIGSTOP)  # alive, holding its OS lock, but doing nothing
    stopped = time.monotonic()
    server.default = server.ok()
    d = PersistentDelivery(db_path=journal, api_base=server.url, batch_interval=0.02, lease_s=lease)
    try:
        assert wait_until(lambda: server.stored_ids(), 30), d.stats()
        waited = time.monotonic() - stopped
        assert waited >= lease * 2 / 3 - 0.2, f"a live holder's lease was taken after {waited:.1f}s"
        assert d.flush(30)
    finally:
        d.stop(5)
        proc.send_signal(signal.SIGKILL)
        proc.send_signal(signal.SIGCONT)
        proc.wait()
    assert set(acked(out)) <= server.stored_ids()


def test_stop_with_sends_hung_in_flight_returns_their_claims(tmp_path, server):
    journal = tmp_path / "q.db"
    server.default = server.hang(30)
    d = PersistentDelivery(db_path=journal, api_base=server.url, batch_interval=0.02, lease_s=LEASE,
                           timeout=60)
    ids = [d.enqueue({"api_id": "openai", "service_key": "m", "n": i}) for i in range(50)]
    assert wait_until(lambda: server.requests, 10)
    t0 = time.monotonic()
    assert d.stop(1.0) is False
    assert time.monotonic() - t0 < 5
    s = SqliteJournal(journal).stats()
    assert s["inflight"] == 0 and s["ready"] == 50 and s["lease_holder"] is None, s
    server.default = server.ok()
    t0 = time.monotonic()
    drain(journal, server.url)  # a new dispatcher takes over without waiting out a lease
    assert time.monotonic() - t0 < LEASE / 3
    assert set(ids) <= server.stored_ids()


def test_crash_suite_kills_the_dispatching_process_and_loses_nothing(tmp_path, server):
    journal, out = tmp_path / "q.db", tmp_path / "acked"
    server.default = server.hang(0.15)  # a slow collector: kills land with claims in flight
    rng = random.Random(4321)
    kills = holder_kills = 0
    for _ in range(32):
        # max_attempts 3: claims of killed processes that counted would dead-letter records
        proc = start_producer(journal, server.url, out, "--mode", "committed", "--lease", str(LEASE),
                              "--max-attempts", "3")
        time.sleep(rng.uniform(0.15, 0.6))
        if holder_pid(journal) == proc.pid:
            holder_kills += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    ids = acked(out)
    assert kills >= 30 and len(ids) > 300
    assert holder_kills >= 10, f"only {holder_kills} of {kills} kills hit the dispatching process"
    server.default = server.ok()
    drain(journal, server.url)
    assert set(ids) <= server.stored_ids(), f"{len(set(ids) - server.stored_ids())} acknowledged ids lost"
    s = SqliteJournal(journal).stats()
    assert s["dead"] == 0, SqliteJournal(journal).items("dead", 3)
    assert os.path.exists(f"{journal}.lease")
