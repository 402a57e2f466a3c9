"""Budget benchmarks. Run by hand: `.venv/bin/python bench/bench_budgets.py [--quick]`.

1. check latency at 1,000,000 stored records (SQLite, all in today's window, 1,000 users,
   100 budgets, one per user, plus one over all usage):
   - in-process ``Budgets.check(user_id=...)`` uncached (``cache_s=0``: one aggregate per
     covering budget) and cached (``cache_s=1``, the collector's default);
   - the all-usage budget uncached (its aggregate reads the whole window);
   - ``GET /api/v1/budgets/check`` on a collector process over that database (keep-alive);
   baseline (same run, same file): a raw ``SELECT SUM(cost_nano) ... WHERE user_id = ? AND
   ts >= ?`` on sqlite3.
2. ``POST /api/v1/track`` ingest (batches of 1,000, one keep-alive connection) into a
   collector on SQLite with 100 budgets defined (per user, with webhooks and thresholds
   that are never reached, so every batch is evaluated) against the same collector with
   none (ratio).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.server.support import Collector  # noqa: E402
from tests.support.fault_server import FaultServer  # noqa: E402
from usageledger.budgets import Budgets  # noqa: E402
from usageledger.records import encode, make_usage_record  # noqa: E402
from usageledger.storage import create_storage  # noqa: E402

USERS = 1000
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-haiku-20241022")


def row(label: str, value: str, baseline: str = "", ratio: str = "") -> None:
    print(f"| {label} | {value} | {baseline} | {ratio} |", flush=True)


def today_start() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def make(i: int, start: datetime, span_s: float, n: int):
    return make_usage_record(
        "openai", MODELS[i % 3], 100 + i % 900, 20 + i % 300, cost="0.00012",
        user_id=f"user-{i % USERS}", timestamp=start + timedelta(seconds=span_s * i / n))


def load(url: str, n: int) -> float:
    store = create_storage(url)
    start = today_start()
    span = max((datetime.now(UTC) - start).total_seconds() - 60, 60)  # all in today's window
    t0 = time.perf_counter()
    for lo in range(0, n, 50_000):
        store.save_many([make(i, start, span, n) for i in range(lo, min(n, lo + 50_000))])
    rate = n / (time.perf_counter() - t0)
    store.close()
    return rate


def define(budgets, webhook: str | None = None) -> None:
    for u in range(100):
        budgets.set(f"user-{u}", limit="1000000", period="day", user_id=f"user-{u}",
                    alert_thresholds=[0.5, 0.8, 1.0] if webhook else [], webhook_url=webhook)


def p50_ms(fn, runs: int) -> float:
    fn()  # warm up
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_check(tmp: Path, n: int, runs: int) -> None:
    url = f"sqlite:///{tmp}/check.db"
    rate = load(url, n)
    row(f"load {n:,} records into sqlite (save_many, 50,000 a batch)", f"{rate:,.0f} rec/s")
    store = create_storage(url)
    define(Budgets(store))
    Budgets(store).set("all", limit="1000000", period="day")

    raw = sqlite3.connect(f"{tmp}/check.db")
    since = int(today_start().timestamp() * 1e6)

    def raw_sum(i: int = 0) -> None:
        raw.execute("SELECT SUM(cost_nano), COUNT(*) FROM usage WHERE user_id = ? AND ts >= ?",
                    (f"user-{i % 100}", since)).fetchone()

    base = p50_ms(raw_sum, runs)
    uncached = Budgets(store, cache_s=0)
    cold = p50_ms(lambda i=0: uncached.check(user_id=f"user-{i % 100}"), runs)
    row(f"Budgets.check(user_id) uncached, {n:,} records (2 budgets cover it: its own, all usage)",
        f"{cold:.2f} ms", f"raw SQL sum for one user {base:.2f} ms", f"{cold / base:.1f}x")
    all_only = p50_ms(lambda i=0: uncached.status_of(uncached.budgets()["all"]), max(3, runs // 10))

    def raw_all(i: int = 0) -> None:
        raw.execute("SELECT SUM(cost_nano), COUNT(*) FROM usage WHERE ts >= ?", (since,)).fetchone()

    base_all = p50_ms(raw_all, max(3, runs // 10))
    row(f"all-usage budget spend uncached, {n:,} records in its window", f"{all_only:.1f} ms",
        f"raw SQL sum of the window {base_all:.1f} ms", f"{all_only / base_all:.1f}x")
    uncached_user = p50_ms(lambda i=0: uncached.status_of(uncached.budgets()[f"user-{i % 100}"]), runs)
    row("one per-user budget's spend uncached", f"{uncached_user:.2f} ms",
        f"raw SQL sum for one user {base:.2f} ms", f"{uncached_user / base:.1f}x")
    cached = Budgets(store, cache_s=1.0)
    for u in range(100):
        cached.check(user_id=f"user-{u}")
    warm = p50_ms(lambda i=0: cached.check(user_id=f"user-{i % 100}"), runs * 10)
    row("Budgets.check(user_id) cached (cache_s=1, the collector's default)", f"{warm * 1000:.1f} µs",
        f"raw SQL sum for one user {base:.2f} ms", f"{warm / base:.3f}x")
    store.close()
    raw.close()
    with Collector(url) as col, httpx.Client(timeout=60) as c:
        def http_check(i: int = 0) -> None:
            r = c.get(col.url + "/api/v1/budgets/check", params={"user_id": f"user-{i % 100}"})
            assert r.status_code == 200, r.text

        for u in range(100):
            http_check(u)
        lat = p50_ms(http_check, runs * 5)
        health = p50_ms(lambda i=0: c.get(col.url + "/healthz"), runs * 5)
    row("GET /api/v1/budgets/check?user_id= on the collector (keep-alive, answers mostly cached)",
        f"{lat:.2f} ms", f"GET /healthz {health:.2f} ms", f"{lat / health:.1f}x")


def post_all(url: str, payloads: list[bytes]) -> float:
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=60) as c:
        c.post(url + "/api/v1/track", content=payloads[0], headers=headers)
        t0 = time.perf_counter()
        for body in payloads[1:]:
            r = c.post(url + "/api/v1/track", content=body, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        elapsed = time.perf_counter() - t0
    return (len(payloads) - 1) * 1000 / elapsed


def bench_ingest(tmp: Path, n: int, rounds: int) -> None:
    start = today_start()

    def bodies() -> list[bytes]:
        recs = [encode(make(i, start, 3600, n)) for i in range(n)]
        return [b'{"tracked":[' + b",".join(recs[i:i + 1000]) + b"]}" for i in range(0, n, 1000)]

    none, with100 = [], []
    with FaultServer() as hook:
        for r in range(rounds):  # alternated, so load on the box hits both alike
            with Collector(f"sqlite:///{tmp}/none{r}.db") as col:
                none.append(post_all(col.url, bodies()))
            with Collector(f"sqlite:///{tmp}/b{r}.db", extra_args=["--alert-journal", f"{tmp}/b{r}.journal"]) as col:
                store = create_storage(f"sqlite:///{tmp}/b{r}.db")
                define(Budgets(store), hook.url)
                store.close()
                with100.append(post_all(col.url, bodies()))
        assert not hook.requests, "no threshold is reached: no alert may be sent"
    a, b = statistics.median(with100), statistics.median(none)
    row(f"POST /track -> collector -> sqlite, batch 1,000, 100 budgets with alerts (median of {rounds})",
        f"{a:,.0f} rec/s", f"no budgets {b:,.0f} rec/s", f"{a / b:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    args = ap.parse_args()
    print("| figure | measured | baseline (same run) | ratio |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_check(tmp, 100_000 if args.quick else 1_000_000, 20 if args.quick else 50)
        bench_ingest(tmp, 20_000 if args.quick else 100_000, 1 if args.quick else 3)


if __name__ == "__main__":
    main()
