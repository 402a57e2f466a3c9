"""The Redis Streams journal beyond the shared contract: chosen by ``journal_url`` on every
client, a fallback chain when Redis is down, takeover after a dispatcher is SIGKILLed,
and honest durability. Real redis-server processes; the crash test kills real producers.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import time
import uuid

import pytest
import redis

from tests.core.sinks import CollectSink
from tests.core.test_crash import acked, start_producer
from tests.support.fault_server import FaultServer
from tests.support.servers import free_port, start_redis
from usageledger.config import ConfigError, DeliveryConfig
from usageledger.delivery import PersistentDelivery
from usageledger.journal import JournalError, SqliteJournal, open_journal
from usageledger.journal.redis import RedisJournal
from usageledger.meter import Meter
from usageledger.pipeline import Pipeline
from usageledger.telemetry import TelemetryClient


def stream_url(server, name: str | None = None) -> str:
    return f"{server.url}?stream={name or 'ul-' + uuid.uuid4().hex[:10]}"


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


# -- selection --------------------------------------------------------------------------------

def test_every_client_selects_the_redis_journal_by_url(redis_server, tmp_path, server):
    url = stream_url(redis_server, "sel")
    r = redis.Redis.from_url(redis_server.url)

    d = PersistentDelivery(db_path=tmp_path / "d.db", api_base=server.url, journal_url=url,
                           batch_interval=0.02)
    assert isinstance(d._pipeline.journal, RedisJournal)
    ids = [d.enqueue({"n": i}) for i in range(20)]
    assert d.flush(20)
    assert set(ids) <= server.stored_ids()
    assert d.stats()["journal"].endswith("?stream=sel")
    assert int(r.hget("sel:counters", "delivered")) == 20  # delivered through the stream
    assert not (tmp_path / "d.db").exists()  # the local file is only the fallback
    d.stop(5)

    sink = CollectSink()
    p = Pipeline(sink, journal_url=stream_url(redis_server, "pipe"), durability="committed",
                 batch_interval=0.02)
    p.submit("x1", "raw", b"{}")
    assert r.xlen("pipe") + int(r.hget("pipe:counters", "delivered") or 0) == 1
    assert p.flush(10) and sink.ids == {"x1"}
    p.stop(5)

    m = Meter(f"sqlite:///{tmp_path}/usage.db", journal_url=stream_url(redis_server, "meter"))
    m.record("openai", "gpt-4o", 3, 2)
    assert m.flush(10) and len(m.query()) == 1
    assert int(r.hget("meter:counters", "delivered")) == 1
    m.close(5)

    tc = TelemetryClient(base_dir=tmp_path / "tel", api_base=server.url,
                         journal_url=stream_url(redis_server, "tel"))
    # the collector, shared by every host, on its own stream; the files this host writes
    # keep local journals (a stream is drained by whichever host holds its lease)
    assert tc.pipelines["collector"].journal.location.endswith("?stream=tel.collector")
    assert isinstance(tc.pipelines["ndjson"].journal, SqliteJournal)
    assert isinstance(tc.pipelines["sqlite"].journal, SqliteJournal)
    tc.close()


def test_environment_selects_the_redis_journal(redis_server, tmp_path, monkeypatch, server):
    monkeypatch.setenv("USAGELEDGER_JOURNAL_URL", stream_url(redis_server, "envs"))
    config = DeliveryConfig.resolve(db_path=str(tmp_path / "q.db"), api_base=server.url)
    assert config.journal_url.endswith("stream=envs")
    assert config.sources["journal_url"] == "environment USAGELEDGER_JOURNAL_URL"
    d = PersistentDelivery(config, batch_interval=0.02)
    assert isinstance(d._pipeline.journal, RedisJournal) and d._pipeline.journal.stream == "envs"
    d.stop(5)
    m = Meter(f"sqlite:///{tmp_path}/usage.db")
    assert m._pipeline.journal.stream == "envs.meter"  # its own stream: another sink
    m.close(5)
    with pytest.raises(ConfigError, match="journal_url='ftp://x'.*argument"):
        DeliveryConfig.resolve(journal_url="ftp://x")


# -- durability and fallback ------------------------------------------------------------------

def test_fsync_needs_appendfsync_always(redis_server, tmp_path):
    with pytest.raises(JournalError, match="appendfsync always.*appendonly=no"):
        open_journal(stream_url(redis_server), fsync=True)
    aof = start_redis(persistence=("--appendonly", "yes", "--appendfsync", "always"))
    try:
        j = open_journal(stream_url(aof), fsync=True)
        j.append([("a", "raw", b"{}")])
        assert j.stats()["ready"] == 1
        j.close()
    finally:
        aof.stop()
    # a pipeline asked for fsync on such a server falls back to a local fsync'd journal
    sink = CollectSink()
    p = Pipeline(sink, journal_url=stream_url(redis_server), journal_path=tmp_path / "local.db",
                 durability="fsync", batch_interval=0.02)
    assert isinstance(p.journal, SqliteJournal) and p.journal.fsync
    p.submit("f1", "raw", b"{}")
    assert p.flush(10) and sink.ids == {"f1"}
    p.stop(5)


def test_redis_down_at_start_then_back(tmp_path, server):
    port = free_port()  # nothing listens here yet
    url = f"redis://127.0.0.1:{port}/0?stream=late"
    d = PersistentDelivery(db_path=tmp_path / "local.db", api_base=server.url, journal_url=url,
                           durability="committed", batch_interval=0.02)
    early = [d.enqueue({"n": i}) for i in range(30)]  # accepted: into the local journal
    local = SqliteJournal(tmp_path / "local.db").stats()
    assert local["ready"] + local["inflight"] + local["delivered"] == 30
    wait_until(lambda: set(early) <= server.stored_ids(), 20, "delivery from the local journal")
    assert d.flush(0.5) is False  # Redis may hold records nobody can see: never "settled"
    late = start_redis(port=port)
    try:
        # the recorder tries its primary again every 5 s
        wait_until(lambda: bool(d.enqueue({"probe": 1}))
                   and d._pipeline.recorder.stats()["fallback_active"] is False,
                   20, "writes to go back to Redis")
        more = [d.enqueue({"m": i}) for i in range(30)]
        r = redis.Redis(port=port)
        assert r.xlen("late") + int(r.hget("late:counters", "delivered") or 0) >= 30
        assert d.flush(20)
        assert set(more) <= server.stored_ids()
    finally:
        d.stop(5)
        late.stop()


def test_redis_killed_mid_run_loses_nothing_accepted(tmp_path, server):
    # AOF with fsync on every write: what Redis acknowledged survives its own SIGKILL
    aof = start_redis(persistence=("--appendonly", "yes", "--appendfsync", "always"))
    url = stream_url(aof, "mid")
    server.default = server.status(503)  # nothing leaves while Redis goes down and back
    d = PersistentDelivery(db_path=tmp_path / "local.db", api_base=server.url, journal_url=url,
                           durability="committed", batch_interval=0.02,
                           immediate_pause_seconds=0.05, max_backoff=0.2)
    ids = [d.enqueue({"n": i}) for i in range(200)]
    aof.proc.send_signal(signal.SIGKILL)
    aof.proc.wait()
    ids += [d.enqueue({"n": i}) for i in range(200, 400)]  # refused by Redis: local journal
    assert d.stats()["recorder"]["fallback_active"]
    assert SqliteJournal(tmp_path / "local.db").stats()["ready"] == 200
    back = start_redis(port=aof.port, directory=aof.dir,
                       persistence=("--appendonly", "yes", "--appendfsync", "always"))
    try:
        server.default = server.ok()
        assert d.flush(60), d.stats()
        assert set(ids) <= server.stored_ids()
    finally:
        d.stop(5)
        back.stop()


# -- crash: producers on one stream, the dispatching one SIGKILLed ------------------------------

def _dispatching(procs: dict[int, subprocess.Popen], journal: RedisJournal) -> int | None:
    holder = journal.stats()["lease_holder"]
    pid = None if holder is None else int(holder.split(":")[1])
    return pid if pid in procs else None


def test_sigkill_of_the_dispatching_producer_loses_nothing(redis_server, tmp_path, server):
    url = stream_url(redis_server, "crash")
    journal = RedisJournal(url)
    server.default = server.hang(0.3)  # slow answers: the dispatcher always has claims out
    procs: dict[int, subprocess.Popen] = {}
    outs = []

    def spawn(k: int) -> None:
        out = tmp_path / f"acked{k}"
        outs.append(out)
        # a 3 s lease (renewed every second): a live dispatcher stalled longer than its
        # lease on a loaded machine is taken over like a dead one, and its claims sent again
        p = start_producer(tmp_path / f"local{k}.db", server.url, out, "--mode", "committed",
                           "--lease", "3", "--journal-url", url)
        procs[p.pid] = p

    for k in range(3):
        spawn(k)
    resent: set[str] = set()
    kills = 0
    for k in range(3, 6):  # kill the dispatcher three times, starting a new producer each time
        wait_until(lambda: _dispatching(procs, journal) is not None
                   and journal.stats()["inflight"] > 0, 30, "a dispatcher with claims out")
        pid = _dispatching(procs, journal)
        procs.pop(pid).send_signal(signal.SIGKILL)
        kills += 1
        # what the dead dispatcher held: the only ids that may be sent twice
        resent |= {i["id"] for i in journal.items("inflight", 10_000)}
        spawn(k)
        time.sleep(1.0)
    server.default = server.ok()
    for p in procs.values():
        p.send_signal(signal.SIGTERM)  # still producing: SIGTERM writes what was accepted
    for p in procs.values():
        assert p.wait(60) == -signal.SIGTERM
    # a SIGTERMed producer waits exit_timeout (2 s) for its sends, then exits: what it still
    # held is sent again by the next dispatcher too
    resent |= {i["id"] for i in journal.items("inflight", 10_000)}
    d = PersistentDelivery(db_path=tmp_path / "drain.db", api_base=server.url, journal_url=url,
                           batch_interval=0.02, lease_s=1.0)
    assert d.flush(60), d.stats()
    d.stop(5)
    ids: set[str] = set()
    for out in outs:
        ids |= set(acked(out))
    assert kills == 3 and len(ids) > 200, "producers should have acknowledged records"
    stored = server.stored_ids()
    assert ids <= stored, f"{len(ids - stored)} acknowledged ids were lost"
    received = server.received_ids()
    assert len(stored) == len(set(received))  # no invented ids; the store keeps each id once
    twice = {i for i, n in collections.Counter(received).items() if n > 1}
    assert twice <= resent, f"{len(twice - resent)} ids sent again that no dead dispatcher held"
    s = journal.stats()
    assert (s["ready"], s["inflight"]) == (0, 0)


def test_dead_letters_are_inspected_and_requeued_by_url(redis_server, capsys, monkeypatch):
    from usageledger.cli import main
    from usageledger.delivery import PersistentQueueManager

    url = stream_url(redis_server)
    j = RedisJournal(url)
    j.append([("a", "raw", b'{"id":"a","n":1}'), ("b", "raw", b'{"id":"b","n":2}')])
    j.claim(2, "me")
    j.dead(["a", "b"], "HTTP 400: bad")
    m = PersistentQueueManager(url)
    assert m.stats()["failed"] == 2
    assert [(f["id"], f["payload"]["n"], f["last_error"]) for f in m.failed()] == [
        ("a", 1, "HTTP 400: bad"), ("b", 2, "HTTP 400: bad")]
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    assert main(["requeue", url, "a"]) == 0
    assert j.stats()["dead"] == 1 and [i.id for i in j.claim(5, "me")] == ["a"]
    assert main(["failed", url]) == 0 and "HTTP 400: bad" in capsys.readouterr().out
