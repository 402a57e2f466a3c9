"""KV store benchmarks (issue 6). Run by hand: `.venv/bin/python bench/bench_kv.py [--quick]`.

For each backend (memory, sqlite, redis on a real redis-server started here):
- set / get / incr, one awaited call at a time (latency-bound);
- incr from 50 concurrent tasks (what the pool or the worker thread can overlap);
- mset / mget of 100 keys per call (the batched path), in keys per second.

Every figure is printed next to a baseline measured in the same run on the same machine
(alternating, best of 3 rounds each):
a raw dict (memory), raw sqlite3 on the calling thread (sqlite), raw redis.asyncio calls
and pipelines (redis), doing the same operations with the same json encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
import redis.asyncio as aredis  # noqa: E402

from tests.support.servers import start_redis  # noqa: E402
from usageledger.kv import KVStore, MemoryKVStore, SqliteKVStore  # noqa: E402
from usageledger.kv.redis_store import RedisKVStore  # noqa: E402

VALUE = {"cursor": "abc123", "page": 17, "done": False, "items": [1, 2, 3]}
BATCH = 100
CONCURRENCY = 50
ROUNDS = 3
ROWS: list[str] = []
enc, dec = msgspec.json.encode, msgspec.json.decode


def row(backend: str, op: str, ours: float, base: float, unit: str = "ops/s") -> None:
    line = f"| {backend} | {op} | {ours:,.0f} {unit} | {base:,.0f} {unit} | {ours / base:.2f} |"
    ROWS.append(line)
    print(line, flush=True)


async def timed(fn, n: int) -> float:
    """Runs of ``fn(i)`` per second."""
    t = time.perf_counter()
    for i in range(n):
        await fn(i)
    return n / (time.perf_counter() - t)


async def timed_concurrent(fn, n: int) -> float:
    per_task = n // CONCURRENCY

    async def task() -> None:
        for i in range(per_task):
            await fn(i)

    t = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(CONCURRENCY)))
    return per_task * CONCURRENCY / (time.perf_counter() - t)


async def pair(name: str, op: str, ours, base, unit: str = "ops/s", scale: int = 1) -> None:
    """Alternate ours and baseline ROUNDS times and keep the best of each: on a shared
    2-core box, load from other processes comes and goes, and the best run is the one
    least disturbed by it."""
    best_ours = best_base = 0.0
    for _ in range(ROUNDS):
        best_ours = max(best_ours, await ours() * scale)
        best_base = max(best_base, await base() * scale)
    row(name, op, best_ours, best_base, unit)


async def bench_store(name: str, store: KVStore, baseline: dict, n: int) -> None:
    await store.clear()
    await pair(name, "set", lambda: timed(lambda i: store.set(f"k{i % 1000}", VALUE), n),
               lambda: baseline["set"](n))
    await pair(name, "get", lambda: timed(lambda i: store.get(f"k{i % 1000}"), n),
               lambda: baseline["get"](n))
    await pair(name, "incr", lambda: timed(lambda i: store.incr("counter"), n),
               lambda: baseline["incr"](n))
    await pair(name, f"incr, {CONCURRENCY} tasks",
               lambda: timed_concurrent(lambda i: store.incr("c2"), n),
               lambda: baseline["incr_concurrent"](n))
    batches = max(n // BATCH, 5)
    data = [{f"b{j}:{i}": VALUE for i in range(BATCH)} for j in range(batches)]
    names = [list(d) for d in data]
    await pair(name, f"mset {BATCH} keys/call", lambda: timed(lambda j: store.mset(data[j]), batches),
               lambda: baseline["mset"](data), "keys/s", BATCH)
    await pair(name, f"mget {BATCH} keys/call", lambda: timed(lambda j: store.mget(names[j]), batches),
               lambda: baseline["mget"](names), "keys/s", BATCH)
    await store.clear()
    await store.close()


def dict_baseline() -> dict:
    d: dict = {}

    async def s(n):
        return await timed(_aw(lambda i: d.__setitem__(f"k{i % 1000}", enc(VALUE))), n)

    async def g(n):
        return await timed(_aw(lambda i: dec(d[f"k{i % 1000}"])), n)

    async def inc(n):
        return await timed(_aw(lambda i: d.__setitem__("counter", d.get("counter", 0) + 1)), n)

    async def inc_c(n):
        return await timed_concurrent(_aw(lambda i: d.__setitem__("c2", d.get("c2", 0) + 1)), n)

    async def ms(data):
        return await timed(_aw(lambda j: d.update({k: enc(v) for k, v in data[j].items()})), len(data))

    async def mg(names):
        return await timed(_aw(lambda j: {k: dec(d[k]) for k in names[j] if k in d}), len(names))

    return {"set": s, "get": g, "incr": inc, "incr_concurrent": inc_c, "mset": ms, "mget": mg}


def _aw(fn):
    async def call(i):
        return fn(i)

    return call


def sqlite_baseline(path: str) -> dict:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value, expires REAL)")
    up = "INSERT INTO kv VALUES (?, ?, NULL) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    inc_sql = ("INSERT INTO kv VALUES (?, 1, NULL) ON CONFLICT(key) DO UPDATE SET value = value + 1 "
               "RETURNING value")

    def mset(batch):
        c.execute("BEGIN IMMEDIATE")
        c.executemany(up, [(k, enc(v)) for k, v in batch.items()])
        c.execute("COMMIT")

    def mget(keys):
        marks = ",".join("?" * len(keys))
        return {k: dec(v) for k, v in c.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", keys)}

    async def s(n):
        return await timed(_aw(lambda i: c.execute(up, (f"k{i % 1000}", enc(VALUE)))), n)

    async def g(n):
        def one(i):
            r = c.execute("SELECT value FROM kv WHERE key = ?", (f"k{i % 1000}",)).fetchone()
            return dec(r[0])

        return await timed(_aw(one), n)

    async def inc(n):
        return await timed(_aw(lambda i: c.execute(inc_sql, ("counter",)).fetchone()), n)

    async def inc_c(n):
        return await timed_concurrent(_aw(lambda i: c.execute(inc_sql, ("c2",)).fetchone()), n)

    async def ms(data):
        return await timed(_aw(lambda j: mset(data[j])), len(data))

    async def mg(names):
        return await timed(_aw(lambda j: mget(names[j])), len(names))

    return {"set": s, "get": g, "incr": inc, "incr_concurrent": inc_c, "mset": ms, "mget": mg}


def redis_baseline(r: aredis.Redis) -> dict:
    async def s(n):
        return await timed(lambda i: r.set(f"raw:k{i % 1000}", enc(VALUE)), n)

    async def g(n):
        async def one(i):
            return dec(await r.get(f"raw:k{i % 1000}"))

        return await timed(one, n)

    async def inc(n):
        return await timed(lambda i: r.incr("raw:counter"), n)

    async def inc_c(n):
        return await timed_concurrent(lambda i: r.incr("raw:c2"), n)

    async def ms(data):
        async def one(j):
            async with r.pipeline(transaction=False) as p:
                for k, v in data[j].items():
                    p.set(f"raw:{k}", enc(v))
                await p.execute()

        return await timed(one, len(data))

    async def mg(names):
        async def one(j):
            raws = await r.mget([f"raw:{k}" for k in names[j]])
            return [dec(x) for x in raws if x is not None]

        return await timed(one, len(names))

    return {"set": s, "get": g, "incr": inc, "incr_concurrent": inc_c, "mset": ms, "mget": mg}


async def main(n: int) -> None:
    print("| backend | operation | usageledger.kv | baseline | ratio |")
    print("|---|---|---|---|---|")
    await bench_store("memory", MemoryKVStore(key_prefix="b:"), dict_baseline(), n)
    with tempfile.TemporaryDirectory() as d:
        await bench_store("sqlite", SqliteKVStore(f"{d}/kv.db", key_prefix="b:"),
                          sqlite_baseline(f"{d}/raw.db"), n)
    server = start_redis()
    try:
        raw = aredis.Redis.from_url(server.url, max_connections=CONCURRENCY)
        await bench_store("redis", RedisKVStore(url=server.url, key_prefix="b:"), redis_baseline(raw), n)
        await raw.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer operations (about 10 s)")
    args = ap.parse_args()
    asyncio.run(main(1_000 if args.quick else 5_000))
