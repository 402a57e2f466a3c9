"""End to end with a REAL collector (uvicorn process on sqlite storage): many threads,
a collector outage, replayed and reordered deliveries."""

from __future__ import annotations

import json
import random
import threading

import httpx
import pytest

from tests.server.support import Collector
from tests.support.servers import free_port
from usageledger.journal.base import JournalItem
from usageledger.sinks.base import OK
from usageledger.sinks.http import HttpSink
from usageledger.storage import create_storage
from usageledger.telemetry import TelemetryClient

THREADS, RUNS = 8, 200


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    d = tmp_path_factory.mktemp("collector")
    with Collector(f"sqlite:///{d}/runs.db", log_path=d / "collector.log") as c:
        c.db = d / "runs.db"
        yield c


def make_client(tmp_path, url: str, **kw) -> TelemetryClient:
    opts = dict(base_dir=str(tmp_path / "telemetry"), api_base=url, batch_interval=0.05,
                max_backoff=0.5, timeout=2.0)
    opts.update(kw)
    return TelemetryClient(**opts)


def work(client: TelemetryClient, t: int, n: int, expected: dict[str, dict]) -> None:
    """n runs: events, metrics, a checkpoint on some, a failure on every 7th."""
    for i in range(n):
        try:
            with client.track_run(f"agent-{t}", "job", metrics_json={"t": t}) as ctx:
                ctx.log_event("begin", {"i": i})
                ctx.set_metrics(items_discovered=i + 1)
                if i % 5 == 0:
                    client.update_run(ctx.run_id, items_succeeded=0)
                ctx.set_metrics(items_succeeded=i)
                ctx.log_event("end", None)
                if i % 7 == 0:
                    raise RuntimeError(f"boom {t}-{i}")
            status = "success"
        except RuntimeError:
            status = "failed"
        expected[ctx.run_id] = {"status": status, "items_discovered": i + 1, "items_succeeded": i,
                                "seq": 3 if i % 5 == 0 else 2}


def run_threads(client: TelemetryClient, n: int) -> dict[str, dict]:
    expected: dict[str, dict] = {}
    threads = [threading.Thread(target=work, args=(client, t, n, expected)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(expected) == THREADS * n
    return expected


def latest_ndjson(client: TelemetryClient) -> tuple[dict[str, dict], dict[str, int]]:
    runs: dict[str, dict] = {}
    events: dict[str, int] = {}
    for path in client.ndjson.list_files():
        for line in client.ndjson.read_file(path.name[7:15]):
            rid = line["run_id"]
            if line["record_type"] == "event":
                events[rid] = events.get(rid, 0) + 1
            elif rid not in runs or line["seq"] > runs[rid]["seq"]:
                runs[rid] = line
    return runs, events


def check_everywhere(client: TelemetryClient, collector_db, expected: dict[str, dict]) -> None:
    ndjson_runs, events = latest_ndjson(client)
    store = create_storage(f"sqlite:///{collector_db}")
    try:
        for rid, want in expected.items():
            row = client.database.get_row(rid)
            nd = ndjson_runs[rid]
            remote = store.get_run(rid)
            assert remote is not None, f"run {rid} never reached the collector"
            for where in (row, nd, remote):
                got = {k: where[k] for k in want}
                assert got == want, f"{rid}: {got} != {want}"
            assert remote["metrics_json"] == row["metrics_json"] == nd["metrics_json"]
            assert remote["end_time"] == row["end_time"] == nd["end_time"] is not None
            assert events[rid] == 2
    finally:
        store.close()


def test_8_threads_x_200_runs_reach_ndjson_sqlite_and_the_collector(tmp_path, collector):
    client = make_client(tmp_path, collector.url)
    try:
        expected = run_threads(client, RUNS)
        assert client.flush(90)
        stats = client.get_stats()
        assert stats["total_runs"] == THREADS * RUNS and stats["active_runs"] == 0
        assert stats["by_status"] == {
            "success": sum(1 for v in expected.values() if v["status"] == "success"),
            "failed": sum(1 for v in expected.values() if v["status"] == "failed"),
        }
        assert stats["pending_api_posts"] == 0 and set(stats["dead"].values()) == {0}
        check_everywhere(client, collector.db, expected)
    finally:
        client.close(10)


def test_collector_down_then_back_all_runs_arrive_and_local_writers_never_wait(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = make_client(tmp_path, url)
    try:
        expected = run_threads(client, 40)
        # the local files are complete while every collector write waits in its journal
        assert client.pipelines["ndjson"].flush(30) and client.pipelines["sqlite"].flush(30)
        assert client.database.get_run_stats()["total"] == THREADS * 40
        assert not client.pipelines["collector"].flush(1)
        stats = client.get_stats()
        assert stats["pending_api_posts"] > 0 and stats["dead"]["collector"] == 0
        assert stats["destinations"]["collector"]["retried"] > 0
        with Collector(f"sqlite:///{tmp_path}/runs.db", port=port,
                       log_path=tmp_path / "collector.log"):
            assert client.flush(60)
            check_everywhere(client, tmp_path / "runs.db", expected)
        assert client.get_stats()["pending_api_posts"] == 0
    finally:
        client.close(5)


def test_replayed_and_reordered_deliveries_never_roll_a_run_back(tmp_path, collector):
    # every write of 30 runs, captured in the collector journal while nothing listens
    client = make_client(tmp_path, f"http://127.0.0.1:{free_port()}", batch_interval=30)
    expected: dict[str, dict] = {}
    work(client, 99, 30, expected)
    client.pipelines["collector"].recorder.write_pending()
    rows = client.pipelines["collector"].journal.items("ready", limit=1000)
    client.close(0.5)
    items = [JournalItem(r["id"], r["kind"], bytes(r["data"]), 1) for r in rows]
    assert len(items) == sum(v["seq"] for v in expected.values())
    newest_first = sorted(items, key=lambda it: -json.loads(it.data)["seq"])
    sink = HttpSink(collector.url)
    try:
        rng = random.Random(7)
        for order in (items, newest_first, rng.sample(items, len(items)), list(reversed(items))):
            for start in range(0, len(order), 17):
                part = order[start:start + 17]
                assert set(sink.send(part).values()) == {OK}
        # one write at a time, newest first, then every old write again
        for it in newest_first + items:
            assert sink.send([it]) == {it.id: OK}
    finally:
        sink.close()
    store = create_storage(f"sqlite:///{collector.db}")
    try:
        for rid, want in expected.items():
            remote = store.get_run(rid)
            assert {k: remote[k] for k in want} == want
    finally:
        store.close()
    # an older PATCH (create=False) is answered stale and changes nothing
    rid, want = next(iter(expected.items()))
    resp = httpx.patch(f"{collector.url}/api/v1/runs/{rid}", json={"seq": 1, "status": "running"})
    assert resp.status_code == 200 and resp.json()["status"] == "stale"
    assert httpx.get(f"{collector.url}/api/v1/runs/{rid}").json()["status"] == want["status"]


def test_events_never_go_to_the_collector(tmp_path, collector):
    client = make_client(tmp_path, collector.url)
    try:
        with client.track_run("solo", "job") as ctx:
            ctx.log_event("only-local", {"x": 1})
        assert client.flush(30)
        collector_journal = client.pipelines["collector"].journal
        assert collector_journal.stats()["delivered"] == 2  # the two run writes, no event
        ndjson_journal = client.pipelines["ndjson"].journal
        assert ndjson_journal.stats()["delivered"] == 3
    finally:
        client.close(5)


PRODUCER = """
import os, signal, sys
from usageledger.telemetry import TelemetryClient
base, url, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = TelemetryClient(base_dir=base, api_base=url, durability="committed", batch_interval=0.05,
                    max_backoff=0.5, timeout=1.0)
for i in range(n):
    with c.track_run("producer", "job") as ctx:
        ctx.set_metrics(items_succeeded=i)
print("done", flush=True)
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
c.close(0.5)
"""


@pytest.mark.parametrize("mode", ["exit", "kill"])
def test_runs_recorded_while_the_collector_was_down_arrive_from_the_next_process(tmp_path, mode):
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = tmp_path / "telemetry"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", PRODUCER, str(base), url, "50", mode], cwd=root,
                         capture_output=True, timeout=120)
    assert out.stdout.strip() == b"done", out.stderr.decode()[-2000:]
    with Collector(f"sqlite:///{tmp_path}/runs.db", port=port, log_path=tmp_path / "collector.log"):
        client = make_client(tmp_path, url)  # the same journals: it delivers what they hold
        try:
            assert client.flush(60)
            runs = client.database.get_run_stats()
            assert runs == {"total": 50, "by_status": {"success": 50}}
        finally:
            client.close(5)
        store = create_storage(f"sqlite:///{tmp_path}/runs.db")
        try:
            remote = store.query_runs(agent_name="producer", limit=100)
        finally:
            store.close()
    assert len(remote) == 50
    assert {r["status"] for r in remote} == {"success"}
    assert sorted(r["items_succeeded"] for r in remote) == list(range(50))
