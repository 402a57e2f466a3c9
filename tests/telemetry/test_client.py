"""TelemetryClient: every method, against the real local writers (no collector here)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from usageledger.telemetry import RunRecord, TelemetryClient


@pytest.fixture
def client(tmp_path):
    c = TelemetryClient(base_dir=str(tmp_path), api_enabled=False, batch_interval=0.05, host="test-host",
                        agent_owner="owner")
    yield c
    c.close(5)


def runs_in_ndjson(c: TelemetryClient) -> dict[str, dict]:
    """The latest line (highest seq) of every run in the NDJSON files."""
    latest: dict[str, dict] = {}
    for path in c.ndjson.list_files():
        for line in c.ndjson.read_file(path.name[7:15]):
            if line["record_type"] == "run":
                if line["run_id"] not in latest or line["seq"] > latest[line["run_id"]]["seq"]:
                    latest[line["run_id"]] = line
    return latest


def events_in_ndjson(c: TelemetryClient) -> list[dict]:
    return [e for p in c.ndjson.list_files() for e in c.ndjson.read_file(p.name[7:15])
            if e["record_type"] == "event"]


def test_start_run_writes_a_running_record_everywhere(client):
    rid = client.start_run("crawler", "scan", "cron", product="words", items_discovered=3,
                           metrics_json={"depth": 2})
    assert rid.split("-")[1] == "crawler"
    assert client.flush(10)
    row = client.database.get_row(rid)
    assert row["status"] == "running" and row["seq"] == 1 and row["trigger_type"] == "cron"
    assert row["product"] == "words" and row["items_discovered"] == 3 and row["metrics_json"] == {"depth": 2}
    assert row["agent_owner"] == "owner" and row["host"] == "test-host"
    assert datetime.fromisoformat(row["start_time"]).utcoffset().total_seconds() == 0
    assert runs_in_ndjson(client)[rid]["status"] == "running"
    assert client.start_run("crawler", "scan", run_id="my-own-id") == "my-own-id"
    with pytest.raises(ValueError, match="already an active run"):
        client.start_run("crawler", "scan", run_id="my-own-id")


def test_start_run_refuses_bad_input_and_starts_nothing(client):
    with pytest.raises(ValueError, match="agent_name must be a non-empty string, got ''"):
        client.start_run("", "scan")
    with pytest.raises(ValueError, match="job_type"):
        client.start_run("a", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown run field 'colour'"):
        client.start_run("a", "j", colour="red")
    with pytest.raises(TypeError, match="items_failed must be a non-negative integer, got 1.5"):
        client.start_run("a", "j", items_failed=1.5)
    with pytest.raises(ValueError, match="run_id must be a string of 1 to 255"):
        client.start_run("a", "j", run_id="x" * 300)
    assert client.active_runs == []
    assert client.flush(5)
    assert client.database.get_run_stats()["total"] == 0


def test_log_event_goes_to_ndjson_only(client):
    rid = client.start_run("a", "j")
    client.log_event(rid, "fetched", {"url": "https://x", "n": [1, 2]})
    client.log_event(rid, "done")
    with pytest.raises(TypeError, match="payload is not JSON-serialisable"):
        client.log_event(rid, "bad", {"s": object()})
    with pytest.raises(ValueError, match=r"payload\.x must be finite"):
        client.log_event(rid, "bad", {"x": float("inf")})
    with pytest.raises(TypeError, match="payload must be a dict"):
        client.log_event(rid, "bad", ["list"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_type"):
        client.log_event(rid, "")
    with pytest.raises(ValueError, match="'nope' is not an active run"):
        client.log_event("nope", "x")
    client.end_run(rid)
    assert client.flush(10)
    events = events_in_ndjson(client)
    assert [(e["run_id"], e["event_type"], e["payload"]) for e in events] == [
        (rid, "fetched", {"url": "https://x", "n": [1, 2]}), (rid, "done", None)]
    assert all(e["id"] for e in events)
    with pytest.raises(ValueError, match="already ended"):
        client.log_event(rid, "late")


def test_end_run_records_final_state_and_duration(client):
    rid = client.start_run("a", "j", items_discovered=10)
    time.sleep(0.05)
    client.end_run(rid, "partial", items_succeeded=8, items_failed=2, output_summary="8 of 10")
    assert client.flush(10)
    got = client.database.get_run(rid)
    assert got.status == "partial" and got.items_succeeded == 8 and got.items_discovered == 10
    assert got.output_summary == "8 of 10" and got.end_time and got.end_time >= got.start_time
    assert 50 <= got.duration_ms < 5000
    assert client.database.get_row(rid)["seq"] == 2
    assert runs_in_ndjson(client)[rid]["status"] == "partial"
    with pytest.raises(ValueError, match="already ended"):
        client.end_run(rid)


def test_end_run_bad_input_leaves_the_run_active(client):
    rid = client.start_run("a", "j")
    with pytest.raises(ValueError, match="status must be one of"):
        client.end_run(rid, "done")
    with pytest.raises(ValueError, match="cannot be 'running'"):
        client.end_run(rid, "running")
    with pytest.raises(TypeError, match="error_summary must be a string"):
        client.end_run(rid, "failed", error_summary=RuntimeError("x"))
    with pytest.raises(TypeError, match="run_id must be a string"):
        client.end_run(123)  # type: ignore[arg-type]
    assert client.active_runs == [rid]
    client.end_run(rid)


def test_track_run_success_with_context(client):
    with client.track_run("a", "j", "api", git_repo="repo") as ctx:
        ctx.log_event("step", {"i": 1})
        ctx.set_metrics(items_discovered=2, items_succeeded=2, insight_id="ins",
                        product_family="cells", subdomain="docs", git_branch="main", git_run_tag="v1",
                        metrics_json='{"score": 0.5}')
        assert ctx.record.items_discovered == 2 and isinstance(ctx.record, RunRecord)
        with pytest.raises(TypeError, match="unknown run field 'status'"):
            ctx.set_metrics(status="success")
    assert client.flush(10)
    got = client.database.get_run(ctx.run_id)
    assert got.status == "success" and got.trigger_type == "api" and got.git_repo == "repo"
    assert (got.insight_id, got.product_family, got.subdomain, got.git_branch, got.git_run_tag) == (
        "ins", "cells", "docs", "main", "v1")
    assert got.metrics_json == {"score": 0.5}
    assert [e["event_type"] for e in events_in_ndjson(client)] == ["step"]


def test_track_run_exception_records_failed_and_reraises(client):
    with pytest.raises(KeyError, match="missing-page"):
        with client.track_run("a", "j") as ctx:
            ctx.set_metrics(items_discovered=4, items_failed=1)
            {}["missing-page"]
    assert client.active_runs == []
    assert client.flush(10)
    got = client.database.get_run(ctx.run_id)
    assert got.status == "failed" and got.items_discovered == 4 and got.items_failed == 1
    assert got.error_summary == "KeyError: 'missing-page'"
    assert "Traceback" in got.error_details and "test_track_run_exception" in got.error_details
    assert runs_in_ndjson(client)[ctx.run_id]["status"] == "failed"


def test_track_run_leaves_a_run_the_block_ended(client):
    with client.track_run("a", "j") as ctx:
        client.end_run(ctx.run_id, "timeout")
    with pytest.raises(ValueError, match="x"):
        with client.track_run("a", "j") as ctx2:
            client.end_run(ctx2.run_id, "cancelled")
            raise ValueError("x")
    assert client.flush(10)
    assert client.database.get_run(ctx.run_id).status == "timeout"
    assert client.database.get_run(ctx2.run_id).status == "cancelled"


def test_set_metrics_and_update_run(client):
    rid = client.start_run("a", "j")
    client.set_metrics(rid, items_discovered=7)
    assert client.flush(10)
    assert client.database.get_run(rid).items_discovered == 0  # set_metrics writes at the end
    client.update_run(rid, items_succeeded=3)
    assert client.flush(10)
    row = client.database.get_row(rid)
    assert (row["items_discovered"], row["items_succeeded"], row["status"], row["seq"]) == (7, 3, "running", 2)
    with pytest.raises(ValueError, match="not an active run"):
        client.set_metrics("nope", items_failed=1)
    with pytest.raises(TypeError, match="insight_id must be a string"):
        client.set_metrics(rid, insight_id=5)
    client.end_run(rid)
    assert client.flush(10)
    assert client.database.get_row(rid)["seq"] == 3


def test_get_stats_counts_by_status_and_pending(client):
    for status in ("success", "success", "failed"):
        client.end_run(client.start_run("a", "j"), status)
    client.start_run("a", "j")
    assert client.flush(10)
    s = client.get_stats()
    assert s["total_runs"] == 4
    assert s["by_status"] == {"success": 2, "failed": 1, "running": 1}
    assert s["active_runs"] == 1 and s["runs_started"] == 4
    assert s["runs_ended"] == {"success": 2, "failed": 1}
    assert s["pending"] == {"ndjson": 0, "sqlite": 0} and s["pending_api_posts"] == 0
    assert s["dead"] == {"ndjson": 0, "sqlite": 0}


def test_close_keeps_unfinished_work_in_the_journal_for_the_next_client(tmp_path):
    c = TelemetryClient(base_dir=str(tmp_path), api_enabled=False, batch_interval=60)
    rid = c.start_run("a", "j")
    c.end_run(rid)
    c.pipelines["sqlite"].recorder.write_pending()  # journaled, not delivered yet
    c.pipelines["sqlite"].dispatcher.stop(0)  # simulate a process that dies before delivery
    c.pipelines["sqlite"].recorder.stop()
    c2 = TelemetryClient(base_dir=str(tmp_path), api_enabled=False, batch_interval=0.05)
    try:
        assert c2.flush(20)
        assert c2.database.get_run(rid).status == "success"
    finally:
        c2.close(5)
        c.close(1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_records_runs_through_its_own_threads(tmp_path):
    import os
    import signal
    import threading

    c = TelemetryClient(base_dir=str(tmp_path), api_enabled=False, batch_interval=0.05)
    held, release = threading.Event(), threading.Event()

    def hold_lock() -> None:  # another thread holds the client's lock at fork()
        with c._lock, c.database._db.lock:
            held.set()
            release.wait(10)

    try:
        parent_run = c.start_run("parent", "j")
        holder = threading.Thread(target=hold_lock)
        holder.start()
        held.wait(10)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(20)  # a deadlocked child dies instead of hanging the test
                with c.track_run("child", "j") as ctx:
                    ctx.log_event("hello")
                code = 0 if c.flush(20) else 2
                c.close(5)  # hands the journal leases back (os._exit skips atexit)
            finally:
                os._exit(code)
        release.set()
        holder.join()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        c.end_run(parent_run)
        assert c.flush(20)
        stats = c.database.get_run_stats()
        assert stats == {"total": 2, "by_status": {"success": 2}}
    finally:
        c.close(5)
