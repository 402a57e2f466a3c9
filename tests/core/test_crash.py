"""Crash tests with real processes killed by SIGKILL, delivering over real HTTP."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.fault_server import FaultServer
from usageledger.delivery import PersistentDelivery

ROOT = Path(__file__).resolve().parents[2]


def start_producer(journal, url, out, *extra) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.core.producer", str(journal), url, str(out), *extra],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def acked(out: Path) -> dict[str, float]:
    """id -> time acknowledged, from complete lines only (a kill can tear the last one)."""
    if not out.exists():
        return {}
    got = {}
    for line in out.read_text().split("\n"):
        parts = line.split(" ")
        if len(parts) == 2 and len(parts[0]) == 36:
            got[parts[0]] = float(parts[1])
    return got


def drain(journal, url, timeout=60) -> None:
    d = PersistentDelivery(db_path=journal, api_base=url, batch_interval=0.02, lease_s=1.0)
    assert d.flush(timeout), d.stats()
    d.stop(5)


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def test_sigkill_committed_loses_nothing_acknowledged(tmp_path, server):
    journal, out = tmp_path / "q.db", tmp_path / "acked"
    rng = random.Random(1234)
    for _ in range(22):  # at least 20 kills at random moments
        proc = start_producer(journal, server.url, out, "--mode", "committed", "--lease", "1")
        time.sleep(rng.uniform(0.02, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ids = acked(out)
    assert len(ids) > 100, "the producers should have acknowledged records before the kills"
    drain(journal, server.url)
    stored = server.stored_ids()
    assert set(ids) <= stored, f"{len(set(ids) - stored)} acknowledged ids were lost"
    # every id stored once: the server's store is keyed by id, and ids are never invented
    assert len(stored) == len(set(server.received_ids()))


def test_buffered_stop_exit_and_sigterm_lose_nothing(tmp_path, server):
    for end in ("stop", "exit"):
        out = tmp_path / f"acked-{end}"
        proc = start_producer(tmp_path / f"{end}.db", server.url, out,
                              "--mode", "buffered", "--count", "500", "--end", end)
        assert proc.wait(60) == 0
        # the count first: an empty ack file is a subset of anything
        assert len(acked(out)) == 500, end
        # delivered by stop() / the exit hook itself, before any later process drains
        assert set(acked(out)) <= server.stored_ids(), end
        drain(tmp_path / f"{end}.db", server.url)
    out = tmp_path / "acked-term"
    server.default = server.status(503)  # nothing leaves: the journal must hold them all
    proc = start_producer(tmp_path / "term.db", server.url, out, "--mode", "buffered", "--count", "500")
    assert proc.stdout.readline().strip() == "done"
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == -signal.SIGTERM  # the default action still ends the process
    server.default = server.ok()
    drain(tmp_path / "term.db", server.url)
    assert len(acked(out)) == 500 and set(acked(out)) <= server.stored_ids()


def test_buffered_sigkill_loses_at_most_the_flush_window(tmp_path, server):
    # bound: flush_interval (50 ms) plus one commit; 0.5 s allows for a loaded 2-core CI box
    bound = 0.5
    journal = tmp_path / "q.db"
    lost_total = acked_total = 0
    for k in range(5):
        out = tmp_path / f"acked{k}"
        proc = start_producer(journal, server.url, out, "--mode", "buffered", "--lease", "1")
        time.sleep(random.uniform(0.2, 0.5))
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        drain(journal, server.url)
        stored = server.stored_ids()
        lost = {i: t for i, t in acked(out).items() if i not in stored}
        lost_total += len(lost)
        acked_total += len(acked(out))
        too_old = [i for i, t in lost.items() if t < killed_at - bound]
        assert not too_old, f"{len(too_old)} records acknowledged more than {bound}s before the kill were lost"
    assert acked_total > 1000
    print(f"buffered SIGKILL: {lost_total} of {acked_total} acknowledged records lost, all within {bound}s")


def test_dead_dispatcher_claims_are_taken_over_after_lease(tmp_path, server):
    journal, out = tmp_path / "q.db", tmp_path / "acked"
    server.default = server.hang(30)  # the first dispatcher sends, then waits on the answer
    proc = start_producer(journal, server.url, out, "--mode", "committed", "--count", "50", "--lease", "1",
                          "--dispatch-timeout", "60")
    assert proc.stdout.readline().strip() == "done"
    deadline = time.monotonic() + 20
    while not server.requests:  # a batch is in flight
        assert time.monotonic() < deadline
        time.sleep(0.02)
    from usageledger.journal import SqliteJournal

    assert SqliteJournal(journal).stats()["inflight"] > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.default = server.ok()
    drain(journal, server.url)  # a new process takes the lease once it expires
    assert len(acked(out)) == 50
    assert set(acked(out)) <= server.stored_ids()
    assert SqliteJournal(journal).stats()["inflight"] == 0


def test_four_processes_one_journal(tmp_path, server):
    journal = tmp_path / "shared.db"
    procs = [
        start_producer(journal, server.url, tmp_path / f"acked{k}", "--mode", "buffered",
                       "--count", "400", "--end", "stop", "--lease", "1")
        for k in range(4)
    ]
    for p in procs:
        assert p.wait(120) == 0
    drain(journal, server.url)
    want = set()
    for k in range(4):
        want |= set(acked(tmp_path / f"acked{k}"))
    assert len(want) == 1600
    assert server.stored_ids() == want
    received = server.received_ids()
    assert len(received) == len(set(received)), "a record was delivered twice"



def test_exit_with_a_hung_destination_ends_by_its_deadline_and_keeps_the_records(tmp_path, server):
    server.default = server.hang(60)
    out = tmp_path / "acked"
    t0 = time.monotonic()
    proc = start_producer(tmp_path / "hung.db", server.url, out, "--mode", "buffered",
                          "--count", "300", "--end", "exit", "--dispatch-timeout", "30", "--lease", "1",
                          "--linger", "1")  # long enough for requests to be in flight at exit
    assert proc.wait(60) == 0
    # the exit hook waits exit_timeout (2 s) for delivery, not the 30 s request timeout
    assert time.monotonic() - t0 < 15
    assert len(acked(out)) == 300
    server.default = server.ok()
    drain(tmp_path / "hung.db", server.url)
    assert set(acked(out)) <= server.stored_ids()
