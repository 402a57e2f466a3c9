"""TelemetryClient: cost of start_run + end_run in the caller's thread.

    .venv/bin/python bench/bench_telemetry.py [--runs N] [--quick]

Measured per run (start_run + end_run, perf_counter_ns around the pair), median and p99,
against two baselines measured in the same process:
- the original client's pattern: a synchronous SQLite insert at start and update at end (WAL,
  synchronous=FULL as the original client's DatabaseWriter) in the caller's thread;
- a bare dict build of the same fields (the least any client can do).
The client delivers to NDJSON, SQLite and a collector URL nobody listens on (the
collector journal keeps its writes), so the dispatcher threads are busy as in real use.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from usageledger.telemetry import TelemetryClient  # noqa: E402
from usageledger.telemetry.models import generate_run_id, get_iso8601_timestamp  # noqa: E402


def pct(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(int(len(s) * q), len(s) - 1)]


def bench_client(tmp: str, n: int, durability: str) -> list[int]:
    client = TelemetryClient(base_dir=os.path.join(tmp, durability), durability=durability,
                             api_base="http://127.0.0.1:9", batch_interval=0.2, timeout=0.5)
    out = []
    clock = time.perf_counter_ns
    start, end = client.start_run, client.end_run
    for _ in range(min(n // 10, 1000)):  # warm up
        end(start("bench-agent", "bench"))
    client.flush(30)
    for i in range(n):
        t0 = clock()
        rid = start("bench-agent", "bench")
        end(rid, items_succeeded=i)
        out.append(clock() - t0)
        if i % 2000 == 1999:
            time.sleep(0.05)  # let the writers keep up, as between real runs
    client.close(5)
    return out


def bench_sqlite_sync(tmp: str, n: int) -> list[int]:
    conn = sqlite3.connect(os.path.join(tmp, "original.sqlite"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE agent_runs (run_id TEXT PRIMARY KEY, agent_name TEXT, job_type TEXT,"
                 " start_time TEXT, end_time TEXT, status TEXT, items_succeeded INTEGER, duration_ms INTEGER)")
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        rid = generate_run_id("bench-agent")
        ts = get_iso8601_timestamp()
        conn.execute("INSERT INTO agent_runs (run_id, agent_name, job_type, start_time, status) "
                     "VALUES (?, ?, ?, ?, 'running')", (rid, "bench-agent", "bench", ts))
        conn.execute("UPDATE agent_runs SET end_time=?, status='success', items_succeeded=?, duration_ms=0"
                     " WHERE run_id=?", (get_iso8601_timestamp(), i, rid))
        out.append(clock() - t0)
    conn.close()
    return out


def bench_dict(n: int) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        now = datetime.now(UTC).isoformat()
        rec = {"run_id": generate_run_id("bench-agent"), "agent_name": "bench-agent", "job_type": "bench",
               "trigger_type": "cli", "start_time": now, "status": "running"}
        rec.update(end_time=datetime.now(UTC).isoformat(), status="success", items_succeeded=i)
        out.append(clock() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="2,000 runs")
    args = ap.parse_args()
    n = 2000 if args.quick else args.runs
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("bare dict build (floor)", bench_dict(n)),
            ("original pattern: sync SQLite insert+update", bench_sqlite_sync(tmp, min(n, 2000))),
            ("TelemetryClient, buffered", bench_client(tmp, n, "buffered")),
            ("TelemetryClient, memory journals", bench_client(tmp, n, "memory")),
        ]
    floor = statistics.median(rows[0][1])
    seed = statistics.median(rows[1][1])
    print(f"start_run + end_run in the caller's thread, {n:,} runs (original pattern: {min(n, 2000):,})")
    print("| what | median µs | p99 µs | median / dict floor | original pattern / median |")
    print("|---|---:|---:|---:|---:|")
    for name, samples in rows:
        med = statistics.median(samples)
        print(f"| {name} | {med / 1000:.2f} | {pct(samples, 0.99) / 1000:.2f} | "
              f"{med / floor:.2f}x | {seed / med:.1f}x |")


if __name__ == "__main__":
    main()
