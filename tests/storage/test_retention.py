"""Retention (storage/_retention.py, usageledger/retention.py): random records across 90
days; every summary and budget answer over the rollups' dimensions is the same before and
after; a retention killed with SIGKILL and run again is exact (SQLite and PostgreSQL: a
memory store dies with its process, so it has no run to resume)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from usageledger.budgets.engine import Budgets
from usageledger.records import UsageRecord
from usageledger.retention import apply_retention, cutoff_for
from usageledger.storage import create_storage
from usageledger.storage.base import RunWrite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOW = datetime.now(UTC).replace(microsecond=0)
P = "usageledger_project"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ret.db"
    return _pg_database(request)


def records(n: int, seed: int = 7) -> list[UsageRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        # known, unknown, and finer than nano-units (summed from the exact text)
        cost = rnd.choice([None, Decimal(rnd.randrange(10**7)) / 10**9, Decimal("0.12345678912345"),
                           Decimal("3.3")])
        tags = rnd.choice([{}, {P: "a"}, {P: "b"}, {P: "a", "team": "x"}])
        out.append(UsageRecord(
            id=f"r{seed}-{i}", timestamp=NOW - timedelta(seconds=rnd.randrange(90 * 86400)),
            provider=rnd.choice(["openai", "anthropic"]), model=rnd.choice(["m1", "m2", "m3"]),
            input_tokens=rnd.randrange(5000), output_tokens=rnd.randrange(5000),
            cache_read_tokens=rnd.randrange(50), cache_write_tokens=rnd.randrange(50),
            reasoning_tokens=rnd.randrange(50), input_audio_tokens=rnd.randrange(30),
            cost=cost, currency=rnd.choice(["USD", "USD", "EUR"]),
            user_id=rnd.choice([None, "u1", "u2", "u3"]), customer_key=rnd.choice([None, "c1", "c2"]),
            session_id=rnd.choice([None, "s1"]), tags=tags))
    return out


def _day(days_ago: int) -> datetime:
    return (NOW - timedelta(days=days_ago)).replace(hour=0, minute=0, second=0)


QUERIES = [
    (("day",), {}),
    ((), {}),
    (("provider", "model"), {}),
    (("user_id",), {}),
    (("customer_key", "day"), {"provider": "openai"}),
    (("currency",), {"tags": {P: "a"}}),
    (("tag:" + P, "model", "user_id"), {}),
    (("model",), {"user_id": "u2", "customer_key": "c1"}),
    (("day", "provider"), {"since": _day(60), "until": _day(10)}),
    (("user_id", "currency"), {"since": _day(45)}),
    (("model",), {"until": _day(20), "tags": {P: "b"}}),
]


def answers(store) -> list:
    out = [store.aggregate(k, **f) for k, f in QUERIES]
    engine = Budgets(store, cache_s=0)
    for name in sorted(store.list_budgets()):
        status = engine.status(name, at=NOW)
        out.append({k: v for k, v in status.items() if k not in ("window_start", "window_end")})
    return out


def put_budgets(store) -> None:
    engine = Budgets(store, cache_s=0)
    engine.set("u1-month", limit="1000", period="month", user_id="u1")
    engine.set("a-total", limit="1000", period="total", tags={P: "a"})
    engine.set("all-total", limit="5", period="total", currency="EUR")
    engine.set("c2-model", limit="1000", period="total", customer_key="c2", model="m2")


def test_summaries_and_budgets_are_the_same_before_and_after(url):
    store = create_storage(url)
    try:
        recs = records(4000)
        store.save_many(recs)
        put_budgets(store)
        before = answers(store)
        done = apply_retention(store, 30, {"b": 7}, now=NOW, batch=300)
        cutoff, cutoff_b = cutoff_for(30, NOW), cutoff_for(7, NOW)
        gone = [r for r in recs if r.timestamp < (cutoff_b if r.tags.get(P) == "b" else cutoff)]
        assert done["records"] == len(gone) > 1000
        assert store.count() == len(recs) - len(gone)
        kept = {r.id for r in store.iter_records()}
        assert kept == {r.id for r in recs} - {r.id for r in gone}  # listings: raw records only
        assert answers(store) == before
        # a second run finds nothing more and changes nothing
        assert apply_retention(store, 30, {"b": 7}, now=NOW)["records"] == 0
        assert answers(store) == before
    finally:
        store.close()


def test_new_records_after_retention_add_up_with_the_rollups(url):
    store = create_storage(url)
    try:
        recs = records(1500, seed=3)
        store.save_many(recs[:1000])
        apply_retention(store, 30, now=NOW, batch=200)
        store.save_many(recs[1000:])
        apply_retention(store, 30, now=NOW, batch=200)
        reference = create_storage("memory")
        reference.save_many(recs)
        for keys, filters in QUERIES:
            assert store.aggregate(keys, **filters) == reference.aggregate(keys, **filters), keys
    finally:
        store.close()


def test_runs_are_folded_into_daily_counts(url):
    store = create_storage(url)
    try:
        rnd = random.Random(5)
        writes = []
        for i in range(60):
            started = NOW - timedelta(days=rnd.randrange(90))
            writes.append(RunWrite(f"run-{i}", {"agent_name": rnd.choice(["x", "y"]), "status": "done",
                                               "project": rnd.choice(["a", "b"]),
                                               "start_time": started.isoformat(),
                                               "events": [{"type": "step", "n": 1}]}))
        store.write_runs(writes)
        old = [w for w in writes if datetime.fromisoformat(w.fields["start_time"]) < cutoff_for(30, NOW)]
        done = apply_retention(store, 30, now=NOW)
        assert done["runs"] == len(old) > 0
        assert {r["run_id"] for r in store.query_runs()} == {w.run_id for w in writes} - {w.run_id for w in old}
        counts = store.retained_runs()
        assert sum(counts.values()) == len(old)
        for w in old:
            assert store.get_run(w.run_id) is None
    finally:
        store.close()


_KILLABLE = """
import sys
from usageledger.cli import main
sys.exit(main(["retention", "apply", "--storage", sys.argv[1], "--days", "30", "--batch", "50"]))
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_retention_killed_mid_way_and_run_again_is_exact(kind, tmp_path, request):
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/kill.db"
    else:
        url = _pg_database(request)
    store = create_storage(url)
    try:
        recs = records(12000, seed=11)
        store.save_many(recs)
        put_budgets(store)
        before = answers(store)
        total = store.count()
        old = sum(1 for r in recs if r.timestamp < cutoff_for(30))
        env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, url], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        killed_at = None
        while time.monotonic() < deadline and proc.poll() is None:
            left = store.count()
            if total - left >= 500:  # some batches committed, most still to come
                proc.send_signal(signal.SIGKILL)
                killed_at = left
                break
            time.sleep(0.01)
        proc.wait(30)
        assert killed_at is not None, f"retention ended before the kill: {proc.stderr.read().decode()[-500:]}"
        assert total - old < store.count() < total, "the kill did not land mid-retention"
        assert proc.returncode == -signal.SIGKILL
        # what the killed run left is consistent already, and a second run finishes exactly
        assert answers(store) == before
        out = subprocess.run([sys.executable, "-c", _KILLABLE, url], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert store.count() == total - old
        assert answers(store) == before
    finally:
        store.close()


def _pg_database(request) -> str:
    return request.getfixturevalue("postgres_server").new_database("ul_ret")


def test_serve_with_retention_days_folds_while_it_runs(tmp_path):
    """A real `usageledger serve --retention-days 30` process: the loop runs at start; the
    summary is the same, the listing says from when it holds raw records."""
    import httpx

    from tests.server.support import Collector

    url = f"sqlite:///{tmp_path}/serve.db"
    store = create_storage(url)
    recs = records(600, seed=21)
    store.save_many(recs)
    before = store.aggregate(("day", "model"))
    store.close()
    old = sum(1 for r in recs if r.timestamp < cutoff_for(30))
    with Collector(url, extra_args=["--retention-days", "30"]) as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listing = httpx.get(c.url + "/api/v1/usage", params={"limit": 1000}).json()
            if len(listing["records"]) == len(recs) - old:
                break
            time.sleep(0.2)
        assert len(listing["records"]) == len(recs) - old
        assert listing["raw_since"] == cutoff_for(30).isoformat().replace("+00:00", "Z")
        summary = httpx.get(c.url + "/api/v1/summary", params={"group_by": "day,model"}).json()
    assert [(g["day"], g["model"], g["currency"], g["count"], g["cost"]) for g in summary["groups"]] == [
        (g["day"], g["model"], g["currency"], g["count"], format(g["cost"], "f")) for g in before]


def test_cli_retention_apply(tmp_path, capsys):
    from usageledger.cli import main

    url = f"sqlite:///{tmp_path}/cli.db"
    store = create_storage(url)
    recs = records(300, seed=4)
    store.save_many(recs)
    store.close()
    assert main(["retention", "apply", "--storage", url, "--days", "30", "--project-days", "a=7", "--json"]) == 0
    import json

    done = json.loads(capsys.readouterr().out)
    gone = [r for r in recs if r.timestamp < cutoff_for(7 if r.tags.get(P) == "a" else 30)]
    assert done["records"] == len(gone) and set(done["cutoffs"]) == {"a", "*"}
    assert main(["retention", "apply", "--storage", url, "--project-days", "a=zero"]) != 0
    assert "PROJECT=DAYS" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_retentions_and_a_writer_at_once_stay_exact(kind, tmp_path, request):
    """Two replicas run retention at the same time while a producer stores records, old
    and new: every record is counted once, raw or folded."""
    import threading

    url = f"sqlite:///{tmp_path}/race.db" if kind == "sqlite" else _pg_database(request)
    recs = records(6000, seed=17)
    stores = [create_storage(url) for _ in range(3)]
    try:
        stores[0].save_many(recs[:3000])
        errors: list[BaseException] = []

        def run(fn) -> None:
            try:
                fn()
            except BaseException as exc:  # reported below
                errors.append(exc)

        def write() -> None:
            for i in range(3000, 6000, 100):
                stores[0].save_many(recs[i:i + 100])

        threads = [threading.Thread(target=run, args=(write,))]
        threads += [threading.Thread(target=run, args=(lambda s=s: apply_retention(s, 30, now=NOW, batch=200),))
                    for s in stores[1:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        apply_retention(stores[1], 30, now=NOW)  # what arrived after both passes
        reference = create_storage("memory")
        reference.save_many(recs)
        for keys, filters in QUERIES:
            assert stores[0].aggregate(keys, **filters) == reference.aggregate(keys, **filters), keys
        assert stores[0].count() == sum(1 for r in recs if r.timestamp >= cutoff_for(30, NOW))
    finally:
        for s in stores:
            s.close()


def test_a_stop_request_ends_retention_between_batches():
    store = create_storage("memory")
    recs = records(2000, seed=8)
    store.save_many(recs)
    old = sum(1 for r in recs if r.timestamp < cutoff_for(30, NOW))
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # two batches, then stop

    done = apply_retention(store, 30, now=NOW, batch=100, stop=stop)
    assert done["records"] == 200 and store.count() == len(recs) - 200
    assert apply_retention(store, 30, now=NOW, batch=100)["records"] == old - 200  # the rest, later


def test_a_salvaged_sqlite_file_keeps_keys_rollups_and_marks(tmp_path):
    """A damaged SQLite store is moved aside and salvaged (storage.sqlite): project keys,
    the retention rollups and marks come along, so summaries and keys still hold."""
    from usageledger.server.auth import new_key

    store = create_storage(f"sqlite:///{tmp_path}/salvage.db")
    try:
        store.save_many(records(400, seed=9))
        row, _ = new_key("a", "read")
        store.put_key(row)
        apply_retention(store, 30, now=NOW)
        before = answers(store)
        store._replace_corrupt("a test moves the file aside", store._db.gen)
        assert store.salvaged["rows"]["api_keys"] == 1 and store.salvaged["rows"]["usage_retained"] > 0
        assert store.get_key(row["id"]) is not None
        assert answers(store) == before
    finally:
        store.close()
