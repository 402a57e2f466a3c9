"""Storage benchmarks (issue 3). Run by hand: `.venv/bin/python bench/bench_storage.py [--quick]`.

Loads the same N records (default 1,000,000; --quick 100,000) into every backend (sqlite,
postgres, redis, jsonl, memory; PostgreSQL and Redis are started here, on free ports, via
tests/support/servers.py) and reports the median (p50) latency of:

- ``query(limit=100)`` (newest first), ``query(model=..., since=..., limit=100)`` and
  ``query(user_id=..., limit=100)``;
- ``aggregate(("day",))``, ``aggregate(("model",))``, ``aggregate(("day", "model"))`` and
  ``aggregate(("day",), user_id=...)`` (a filter the hourly rollups cannot answer).

Baseline, measured in the same run on the same rows: a raw SQLite table (one row per
record, integer nano-unit cost, the same indexes) queried with plain ``SELECT ... ORDER BY
... LIMIT`` and ``SELECT ... GROUP BY``. Every figure is printed with its ratio to it.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.servers import start_postgres, start_redis  # noqa: E402
from usageledger.records import UsageRecord, new_id  # noqa: E402
from usageledger.storage import create_storage  # noqa: E402
from usageledger.storage.base import ts_us  # noqa: E402

DAYS = 30
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MODELS = [f"model-{i}" for i in range(10)]
PROVIDERS = ["openai", "anthropic", "google", "mistral", "groq"]


def make_records(n: int) -> list[UsageRecord]:
    """Time-ordered like real traffic: 30 days, 10 models, 1,000 users, 5,000 sessions."""
    step = DAYS * 86400 / n
    costs = [Decimal(f"0.000{k:03d}") for k in range(1, 1000)]
    out = []
    for i in range(n):
        m = (i * 7) % 10
        out.append(UsageRecord(
            new_id(), T0 + timedelta(seconds=i * step), PROVIDERS[m % 5], MODELS[m],
            100 + i % 900, 10 + i % 300, i % 50, 0, 0, costs[i % 999], "USD",
            f"user-{i % 1000}", f"session-{i % 5000}", None, None, None,
            {"env": "prod" if i % 3 else "dev"},
        ))
    return out


def p50(fn: Callable[[], object], budget_s: float = 8.0, runs: int = 15) -> tuple[float, int]:
    """Median seconds over up to ``runs`` calls (at least 3) within ``budget_s``."""
    fn()  # warm caches and prepared statements
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - started < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def raw_sqlite(path: Path, records: list[UsageRecord]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("CREATE TABLE raw (id TEXT PRIMARY KEY, ts INTEGER, provider TEXT, model TEXT, "
                 "input_tokens INTEGER, output_tokens INTEGER, cost_nano INTEGER, user_id TEXT, "
                 "session_id TEXT)")
    for ddl in ("raw (ts, id)", "raw (provider, ts)", "raw (model, ts)", "raw (user_id, ts)",
                "raw (session_id, ts)"):
        conn.execute(f"CREATE INDEX IF NOT EXISTS i_{ddl.split('(')[1].split(',')[0]} ON {ddl}")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO raw VALUES (?,?,?,?,?,?,?,?,?)", [
        (r.id, ts_us(r.timestamp), r.provider, r.model, r.input_tokens, r.output_tokens,
         int(r.cost.scaleb(9)), r.user_id, r.session_id) for r in records])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    return conn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100,000 records instead of 1,000,000")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--backends", default="sqlite,postgres,redis,jsonl,memory")
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    kinds = args.backends.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="ul-bench-storage-"))
    print(f"building {n:,} records ...", flush=True)
    records = make_records(n)
    since = T0 + timedelta(days=DAYS - 3)
    day_us = 86_400_000_000

    t = time.perf_counter()
    raw = raw_sqlite(tmp / "raw.db", records)
    print(f"raw sqlite baseline loaded in {time.perf_counter() - t:.1f} s", flush=True)
    baseline_ops = {
        "query newest 100": lambda: raw.execute(
            "SELECT * FROM raw ORDER BY ts DESC, id DESC LIMIT 100").fetchall(),
        "query model+since 100": lambda: raw.execute(
            "SELECT * FROM raw WHERE model = ? AND ts >= ? ORDER BY ts DESC, id DESC LIMIT 100",
            (MODELS[3], ts_us(since))).fetchall(),
        "query user 100": lambda: raw.execute(
            "SELECT * FROM raw WHERE user_id = ? ORDER BY ts DESC, id DESC LIMIT 100",
            ("user-7",)).fetchall(),
        "aggregate day": lambda: raw.execute(
            f"SELECT ts / {day_us}, count(*), sum(input_tokens), sum(output_tokens), "
            "sum(cost_nano) FROM raw GROUP BY 1").fetchall(),
        "aggregate model": lambda: raw.execute(
            "SELECT model, count(*), sum(input_tokens), sum(output_tokens), sum(cost_nano) "
            "FROM raw GROUP BY 1").fetchall(),
        "aggregate day,model": lambda: raw.execute(
            f"SELECT ts / {day_us}, model, count(*), sum(input_tokens), sum(output_tokens), "
            "sum(cost_nano) FROM raw GROUP BY 1, 2").fetchall(),
        "aggregate day, user filter": lambda: raw.execute(
            f"SELECT ts / {day_us}, count(*), sum(input_tokens), sum(output_tokens), "
            "sum(cost_nano) FROM raw WHERE user_id = ? GROUP BY 1", ("user-7",)).fetchall(),
    }
    base = {name: p50(fn)[0] for name, fn in baseline_ops.items()}

    servers = []
    rows: list[str] = []
    try:
        for kind in kinds:
            if kind == "postgres":
                pg = start_postgres()
                servers.append(pg)
                store = create_storage(pg.url)
            elif kind == "redis":
                rs = start_redis()
                servers.append(rs)
                store = create_storage(rs.url)
            elif kind == "sqlite":
                store = create_storage(f"sqlite:///{tmp}/usage.db")
            elif kind == "jsonl":
                store = create_storage("jsonl", path=tmp / "usage.jsonl")
            else:
                store = create_storage("memory")
            t = time.perf_counter()
            for i in range(0, n, 50_000):
                store.save_many(records[i:i + 50_000])
            load_s = time.perf_counter() - t
            print(f"{kind}: loaded {n:,} in {load_s:.1f} s ({n / load_s:,.0f} records/s)", flush=True)
            ops = {
                "query newest 100": lambda s=store: s.query(limit=100),
                "query model+since 100": lambda s=store: s.query(model=MODELS[3], since=since, limit=100),
                "query user 100": lambda s=store: s.query(user_id="user-7", limit=100),
                "aggregate day": lambda s=store: s.aggregate(("day",)),
                "aggregate model": lambda s=store: s.aggregate(("model",)),
                "aggregate day,model": lambda s=store: s.aggregate(("day", "model")),
                "aggregate day, user filter": lambda s=store: s.aggregate(("day",), user_id="user-7"),
            }
            check = store.aggregate(())[0]
            assert check["count"] == n and check["cost"] == sum((r.cost for r in records), Decimal(0))
            for name, fn in ops.items():
                took, runs = p50(fn)
                line = (f"| {kind} | {name} | {took * 1000:,.2f} ms | {base[name] * 1000:,.2f} ms "
                        f"| {took / base[name]:.2f} | {runs} |")
                rows.append(line)
                print(line, flush=True)
            rows.append(f"| {kind} | load (save_many, batches of 50,000) | {n / load_s:,.0f} records/s | | | |")
            store.clear()
            store.close()
    finally:
        for server in servers:
            server.stop()
    print(f"\n{n:,} records; p50 (ratio = ours / raw SQLite on the same rows)\n")
    print("| backend | operation | p50 | raw SQLite baseline | ratio | runs |")
    print("|---|---|---|---|---|---|")
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
