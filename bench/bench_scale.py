"""Scale benchmarks (issue 19). Run by hand:

    .venv/bin/python bench/bench_scale.py aggregates [-n 1000000] [--backends sqlite,postgres,chdb]
    .venv/bin/python bench/bench_scale.py journal [-n 50000]
    .venv/bin/python bench/bench_scale.py collectors [-n 100000] [--replicas 1,2,4]

- ``aggregates``: the same N records (30 days, 10 models, 1,000 users; from
  bench_storage.make_records) loaded into each backend, then the median of: aggregate day x
  model, per-user totals and their top 10 by cost, a filtered page (one model, the last 3
  days, 100 newest). Ratio: SQLite's time over the backend's (above 1 = faster than SQLite).
- ``journal``: append (1,000 items per transaction, as the writer's group commit), claim
  (100) and ack, items/s, the Redis Streams journal against the SQLite journal (ratio =
  Redis over SQLite). Redis is started here without persistence, as in the tests.
- ``collectors``: R collector processes (``usageledger serve``) on one PostgreSQL, 4
  producer processes posting batches of 1,000 records round-robin to them, and each
  producer re-posting its first batch to another replica (copies the store must drop):
  records/s from the first post to the last answer, and a check that every id is stored
  once. PostgreSQL and Redis are started here (tests/support/servers.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_storage import DAYS, MODELS, T0, make_records  # noqa: E402

from tests.support.servers import start_postgres, start_redis  # noqa: E402
from usageledger.storage import create_storage  # noqa: E402


def p50(fn: Callable[[], object], budget_s: float = 10.0, runs: int = 9) -> float:
    """Median seconds over up to ``runs`` calls (at least 3) within ``budget_s``."""
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - started < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fmt(s: float) -> str:
    return f"{s * 1000:.2f} ms" if s < 1 else f"{s:.2f} s"


# -- aggregates ---------------------------------------------------------------------------------

def bench_aggregates(n: int, kinds: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ul-bench-scale-"))
    print(f"building {n:,} records ...", flush=True)
    records = make_records(n)
    since = T0 + timedelta(days=DAYS - 3)

    def top10(store) -> list:
        rows = store.aggregate(("user_id",))
        return sorted(rows, key=lambda r: r["cost"], reverse=True)[:10]

    ops = {
        "aggregate day x model": lambda s: s.aggregate(("day", "model")),
        "per-user top 10": top10,
        "filtered page (model, 3 days, 100)": lambda s: s.query(model=MODELS[3], since=since, limit=100),
    }
    results: dict[str, dict[str, float]] = {}
    loads: dict[str, float] = {}
    checks: dict[str, tuple] = {}
    servers = []
    try:
        for kind in kinds:
            if kind == "postgres":
                pg = start_postgres()
                servers.append(pg)
                store = create_storage(pg.url)
            elif kind == "chdb":
                store = create_storage(f"chdb:///{tmp}/usage.chdb")
            else:
                store = create_storage(f"sqlite:///{tmp}/usage.db")
            t = time.perf_counter()
            for i in range(0, n, 50_000):
                store.save_many(records[i:i + 50_000])
            loads[kind] = n / (time.perf_counter() - t)
            print(f"{kind}: loaded at {loads[kind]:,.0f} records/s", flush=True)
            results[kind] = {name: p50(lambda fn=fn, s=store: fn(s)) for name, fn in ops.items()}
            (total,) = store.aggregate(())
            checks[kind] = (total["count"], total["cost"], tuple(r["user_id"] for r in top10(store)))
            for name, s in results[kind].items():
                print(f"  {name}: {fmt(s)}", flush=True)
            store.close()
    finally:
        for s in servers:
            s.stop()
    assert len({c for c in checks.values()}) == 1, f"backends disagree: {checks}"
    base = results.get("sqlite")
    print(f"\n{n:,} records; every backend returned the same totals and top 10\n")
    print("| backend | operation | p50 | SQLite | SQLite / backend |")
    print("|---|---|---|---|---|")
    for kind, res in results.items():
        for name, s in res.items():
            ref = base[name] if base else float("nan")
            print(f"| {kind} | {name} | {fmt(s)} | {fmt(ref)} | {ref / s:.2f} |")
        print(f"| {kind} | load (save_many, 50,000 a batch) | {loads[kind]:,.0f} records/s | | |")


# -- journals -------------------------------------------------------------------------------------

def bench_journal(n: int) -> None:
    from usageledger.journal import SqliteJournal, open_journal

    redis = start_redis()
    tmp = Path(tempfile.mkdtemp(prefix="ul-bench-journal-"))
    rows = []
    try:
        for kind in ("sqlite", "redis"):
            j = (SqliteJournal(tmp / "q.db") if kind == "sqlite"
                 else open_journal(f"{redis.url}?stream=bench-{uuid.uuid4().hex[:6]}"))
            items = [(f"id-{i}", "usage", b'{"provider":"openai","model":"gpt-4o","n":%d}' % i)
                     for i in range(n)]
            t = time.perf_counter()
            for i in range(0, n, 1000):
                j.append(items[i:i + 1000])
            append = n / (time.perf_counter() - t)
            assert j.acquire("bench", 60)
            claim_s = ack_s = 0.0
            got = 0
            while True:
                t = time.perf_counter()
                batch = j.claim(100, "bench")
                claim_s += time.perf_counter() - t
                if not batch:
                    break
                got += len(batch)
                t = time.perf_counter()
                j.ack([b.id for b in batch])
                ack_s += time.perf_counter() - t
            assert got == n and j.stats()["delivered"] == n, (kind, got, j.stats())
            rows.append((kind, append, n / claim_s, n / ack_s))
            j.close()
    finally:
        redis.stop()
    print(f"\n{n:,} items; append 1,000 a transaction, claim 100, ack 100\n")
    print("| journal | append items/s | claim items/s | ack items/s |")
    print("|---|---|---|---|")
    for kind, a, c, k in rows:
        print(f"| {kind} | {a:,.0f} | {c:,.0f} | {k:,.0f} |")
    (_, a0, c0, k0), (_, a1, c1, k1) = rows
    print(f"| redis / sqlite | {a1 / a0:.2f} | {c1 / c0:.2f} | {k1 / k0:.2f} |")


# -- collectors -----------------------------------------------------------------------------------

def _producer(urls: list[str], batches: list[list[dict]], again_to: str, start_at: float, out) -> None:
    import httpx

    time.sleep(max(start_at - time.time(), 0))
    with httpx.Client(timeout=120) as client:
        for k, batch in enumerate(batches):
            r = client.post(urls[k % len(urls)] + "/api/v1/track", json={"tracked": batch})
            r.raise_for_status()
        client.post(again_to + "/api/v1/track", json={"tracked": batches[0]}).raise_for_status()
    out.put(time.time())


def bench_collectors(n: int, replicas: list[int]) -> None:
    from tests.server.support import Collector, record

    pg = start_postgres()
    rows = []
    try:
        for r in replicas:
            db = f"bench_{uuid.uuid4().hex[:8]}"
            import psycopg

            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")
            url = pg.url.rsplit("/", 1)[0] + "/" + db
            create_storage(url).close()  # schema made once, before the replicas race
            collectors = [Collector(url).start() for _ in range(r)]
            try:
                recs = [record(i) for i in range(n)]
                per = n // 4
                ctx = multiprocessing.get_context("spawn")
                out = ctx.Queue()
                start_at = time.time() + 3.0
                procs = []
                for p in range(4):
                    mine = recs[p * per:(p + 1) * per]
                    batches = [mine[i:i + 1000] for i in range(0, len(mine), 1000)]
                    urls = [c.url for c in collectors]
                    urls = urls[p % r:] + urls[:p % r]
                    procs.append(ctx.Process(target=_producer, args=(
                        urls, batches, collectors[(p + 1) % r].url, start_at, out)))
                for proc in procs:
                    proc.start()
                ends = [out.get(timeout=900) for _ in procs]
                for proc in procs:
                    proc.join(60)
                elapsed = max(ends) - start_at
                store = create_storage(url)
                stored = store.count()
                store.close()
                assert stored == 4 * per, f"{stored} stored, {4 * per} sent"
                rows.append((r, 4 * per / elapsed, stored))
                print(f"{r} collector(s): {4 * per / elapsed:,.0f} records/s, {stored:,} stored once",
                      flush=True)
            finally:
                for c in collectors:
                    c.stop()
    finally:
        pg.stop()
    print(f"\n{n:,} records from 4 producer processes, batches of 1,000, plus each producer's "
          "first batch sent again to another replica\n")
    print("| collectors | records/s | vs 1 collector | stored (each id once) |")
    print("|---|---|---|---|")
    for r, rate, stored in rows:
        print(f"| {r} | {rate:,.0f} | {rate / rows[0][1]:.2f} | {stored:,} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["aggregates", "journal", "collectors"])
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--backends", default="sqlite,postgres,chdb")
    ap.add_argument("--replicas", default="1,2,4")
    args = ap.parse_args()
    if args.part == "aggregates":
        bench_aggregates(args.n or 1_000_000, args.backends.split(","))
    elif args.part == "journal":
        bench_journal(args.n or 50_000)
    else:
        bench_collectors(args.n or 100_000, [int(x) for x in args.replicas.split(",")])


if __name__ == "__main__":
    main()
