"""Collector benchmarks (issue 3, and the throughput issue). Run by hand:
`.venv/bin/python bench/bench_collector.py [--quick] [--only ingest,stack,drain,breakdown,totals,wire]`.

1. ingest: clients posting `/api/v1/track` batches of 100 and 1,000 fresh records over
   HTTP (keep-alive, uncompressed, one request at a time per client) to `usageledger serve
   --workers W` (W = 1, 2, 4; W client processes), on SQLite and on PostgreSQL; baseline:
   the same bodies posted the same way to a bare ASGI receiver (reads the body, answers
   200) with the same W workers, in the same run;
2. stack: the same at W = 1 with uvicorn's pure-Python stack (asyncio loop, h11) against
   uvloop + httptools, collector and receiver alike;
3. end-to-end drain: a PersistentDelivery journal holding N records -> HttpSink (gzip
   level 1, the default) -> collector -> SQLite, at batch 100 (the default) and 1,000;
   baseline: the same drain into the bare receiver;
4. where an ingest request's time goes, in-process per record at batch 1,000: the wire
   (decode_track: msgspec decode + checks; baseline: the bare msgspec decode of the same
   body into UsageRecords), pricing of records sent without cost, and the storage's
   save_many (SQLite, PostgreSQL), step by step on a table of 100,000 records; for
   PostgreSQL also the parts of its INSERT statement (EXPLAIN ANALYZE) and what each
   secondary index costs it;
5. totals by dimension at 1,000,000 records (per user, per customer, per tag: the top 10
   by cost): ``aggregate`` on SQLite and PostgreSQL against DuckDB on the same rows;
6. wire: the collector's own cost outside storage, per record at batch 100 and 1,000: the same
   posts as ``ingest`` (1 worker, 1 client) to a collector on ``memory://`` storage, and
   to the bare ASGI receiver, alternating: the rates, and the server process's CPU time
   per record; what the collector spends beyond the bare app less the memory store's own
   ``save_many`` (in-process) is the wire and request path.

Every figure is printed with its baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.server.support import Collector  # noqa: E402
from tests.support.receiver import run_receiver  # noqa: E402
from tests.support.servers import _wait_port, free_port, start_postgres  # noqa: E402
from usageledger.delivery import PersistentDelivery  # noqa: E402
from usageledger.journal import SqliteJournal  # noqa: E402
from usageledger.records import KIND_RAW, encode, make_usage_record  # noqa: E402

ROWS: list[str] = []
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-haiku-20241022")
T0 = datetime(2025, 6, 1, tzinfo=UTC)


def row(label: str, value: str, baseline: str = "", ratio: str = "") -> None:
    line = f"| {label} | {value} | {baseline} | {ratio} |"
    ROWS.append(line)
    print(line, flush=True)


def records(n: int, priced: bool = True, start: int = 0) -> list[bytes]:
    """Encoded records with fresh ids, spread over 30 days, 3 models, 50 users, 20
    customers, sessions of 20 calls and a tag."""
    return [encode(make_usage_record(
        "openai", MODELS[i % 3], 100 + i % 900, 20 + i % 300,
        cost="0.00012" if priced else None, user_id=f"user-{i % 50}",
        customer_key=f"cust-{i % 20}", session_id=f"sess-{i // 20}", tags={"team": f"t{i % 7}"},
        timestamp=T0 + timedelta(seconds=i * 26),
    )) for i in range(start, start + n)]


def bodies(recs: list[bytes], batch: int) -> list[bytes]:
    return [b'{"tracked":[' + b",".join(recs[i:i + batch]) + b"]}" for i in range(0, len(recs), batch)]


def post_all(url: str, payloads: list[bytes], batch: int, start_at: float | None = None) -> tuple[float, float, int]:
    """Post every body in turn on one keep-alive connection (after one warm-up post):
    (start, end, records posted after the warm-up)."""
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=120) as c:
        c.post(url + "/api/v1/track", content=payloads[0], headers=headers)  # warm up
        if start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
        t0 = time.time()
        for body in payloads[1:]:
            r = c.post(url + "/api/v1/track", content=body, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
        return t0, time.time(), (len(payloads) - 1) * batch


def _client(args: tuple[str, int, int, int, float]) -> tuple[float, float, int]:
    url, start, n, batch, start_at = args
    return post_all(url, bodies(records(n, start=start), batch), batch, start_at)


def load(url: str, n: int, batch: int, clients: int) -> float:
    """Records per second from ``clients`` processes posting ``n`` fresh records in all,
    each on its own connection, started together."""
    start_at = time.time() + 2.0 + 0.5 * clients  # every client has built its bodies
    jobs = [(url, k * (n // clients), n // clients, batch, start_at) for k in range(clients)]
    with ProcessPoolExecutor(clients) as pool:
        spans = list(pool.map(_client, jobs))
    return sum(s[2] for s in spans) / (max(s[1] for s in spans) - min(s[0] for s in spans))


@contextlib.contextmanager
def collector(storage: str, workers: int = 1, stack: tuple[str, str] | None = None) -> Iterator[str]:
    """``usageledger serve --workers N`` (uvicorn picks uvloop and httptools when they are
    installed), or with ``stack`` = (loop, http) the same app under those choices."""
    if stack is None:
        col = Collector(storage, workers=workers).start(timeout=180)  # slow to start when loaded
        try:
            yield col.url
        finally:
            col.stop()
        return
    port = free_port()
    code = ("import sys, uvicorn; from usageledger.server.app import create_app; "
            "uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), "
            "loop=sys.argv[3], http=sys.argv[4], log_level='warning', access_log=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, storage, str(port), *stack],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def bench_ingest(storages: dict[str, str], n: int, workers_list: tuple[int, ...]) -> None:
    for workers in workers_list:
        for batch in (100, 1000):
            with run_receiver("--workers", str(workers)) as bare_url:
                bare = load(bare_url, n, batch, workers)
            for name, storage in storages.items():
                with collector(storage, workers) as url:
                    rate = load(url, n, batch, workers)
                row(f"ingest -> collector -> {name}, batch {batch:,}, {workers} worker(s), {workers} client(s)",
                    f"{rate:,.0f} rec/s", f"bare ASGI {bare:,.0f} rec/s", f"{rate / bare:.3f}x")


def bench_stack(storage: str, n: int) -> None:
    for batch in (100, 1000):
        for loop, http in (("asyncio", "h11"), ("uvloop", "httptools")):
            with run_receiver("--loop", loop, "--http", http) as bare_url:
                bare = load(bare_url, n, batch, 1)
            with collector(storage, stack=(loop, http)) as url:
                rate = load(url, n, batch, 1)
            row(f"ingest -> collector -> sqlite, batch {batch:,}, 1 worker, {loop} + {http}",
                f"{rate:,.0f} rec/s", f"bare ASGI, same stack {bare:,.0f} rec/s", f"{rate / bare:.3f}x")


def drain(url: str, path: Path, recs: list[bytes], batch: int) -> float:
    """Records per second from a journal already holding ``recs`` (what PersistentDelivery
    writes: raw JSON objects with their id) until every one is delivered."""
    import msgspec

    j = SqliteJournal(path)
    for i in range(0, len(recs), 5000):
        j.append([(msgspec.json.decode(r)["id"], KIND_RAW, r) for r in recs[i:i + 5000]])
    j.close()
    t0 = time.perf_counter()
    delivery = PersistentDelivery(db_path=path, api_base=url, max_batch_size=batch,
                                  batch_interval=0.01, max_batch_bytes=8 * 1024 * 1024 - 64 * 1024)
    if not delivery.flush(600):
        raise RuntimeError(f"drain to {url} did not finish: {delivery.stats()}")
    rate = len(recs) / (time.perf_counter() - t0)
    stats = delivery.stats()
    delivery.stop(5)
    if stats["delivered"] != len(recs) or stats["dead"]:
        raise RuntimeError(f"drain to {url}: {stats}")
    return rate


def bench_drain(bare_url: str, tmp: Path, n: int) -> None:
    for batch in (100, 1000):
        bare = drain(bare_url, tmp / f"bare{batch}.db", records(n, priced=False), batch)
        with Collector(f"sqlite:///{tmp}/drain{batch}.db") as col:
            rate = drain(col.url, tmp / f"journal{batch}.db", records(n, priced=False), batch)
            count = httpx.get(col.url + "/api/v1/summary", params={"group_by": ""}).json()["totals"]["count"]
        if count != n:
            raise RuntimeError(f"the collector stored {count} of {n} records")
        row(f"drain PersistentDelivery -> HttpSink (gzip 1) -> collector -> sqlite, batch {batch:,}",
            f"{rate:,.0f} rec/s", f"same drain to bare ASGI {bare:,.0f} rec/s", f"{rate / bare:.2f}x")


def bench_breakdown(storages: dict[str, str], n: int) -> None:
    import msgspec

    from usageledger.server.wire import _Batch, decode_track
    from usageledger.storage import create_storage

    payloads = bodies(records(n), 1000)
    bare_decode = msgspec.json.Decoder(_Batch).decode
    t0 = time.perf_counter()
    for body in payloads:
        bare_decode(body)
    bare_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for body in payloads:  # results dropped, as in the bare loop (and the server)
        decode_track(body)
    ours_us = (time.perf_counter() - t0) / n * 1e6
    batches = [decode_track(body) for body in payloads]
    row("collector wire: decode + check, per record (batch 1,000)", f"{ours_us:.2f} µs",
        f"bare msgspec decode {bare_us:.2f} µs", f"{ours_us / bare_us:.2f}x")
    from usageledger.pricing import price_record

    unpriced = [decode_track(body) for body in bodies(records(n, priced=False), 1000)]
    t0 = time.perf_counter()
    for batch in unpriced:
        for rec in batch:
            price_record(rec, None)
    price_us = (time.perf_counter() - t0) / n * 1e6
    row("pricing a record sent without cost (price_record, in-process)", f"{price_us:.2f} µs",
        f"wire decode + check {ours_us:.2f} µs", f"{price_us / ours_us:.1f}x")
    from usageledger.pricebook import PriceBook

    book = PriceBook(create_storage("memory"))
    book.price_many(unpriced[0])  # warm: the first lookup loads the price table (~0.4 s)
    one, many = [], []
    for _ in range(7):  # alternating rounds, CPU time: the box is shared
        t0 = time.process_time()
        for batch in unpriced:
            [book.price(rec) for rec in batch]
        one.append(time.process_time() - t0)
        t0 = time.process_time()
        for batch in unpriced:
            book.price_many(batch)
        many.append(time.process_time() - t0)
    one_us, many_us = statistics.median(one) / n * 1e6, statistics.median(many) / n * 1e6
    row("collector pricing, batch of 1,000 without cost: PriceBook.price_many, CPU per record",
        f"{many_us:.2f} µs", f"PriceBook.price per record {one_us:.2f} µs", f"{many_us / one_us:.2f}x")
    with tempfile.TemporaryDirectory() as d:
        _split("sqlite", f"sqlite:///{d}/split.db", n, _sqlite_batch)
    if "postgres" in storages:
        _split("postgres", storages["postgres"], n, _postgres_batch)
        _postgres_statement(storages["postgres"], n)
        _postgres_indexes(storages["postgres"])
    for name, url in storages.items():
        store = create_storage(url)
        try:
            t0 = time.perf_counter()
            for batch in batches:
                store.save_many(batch)
            us = (time.perf_counter() - t0) / n * 1e6
        finally:
            store.close()
        row(f"storage {name}: save_many per record (batch 1,000, in-process)", f"{us:.2f} µs",
            f"wire decode + check {ours_us:.2f} µs", f"{us / ours_us:.1f}x")


def _preloaded(url: str):
    """The store at ``url`` holding 100,000 records (of other ids than :func:`_fresh`'s)."""
    from usageledger.records import decode_usage
    from usageledger.storage import create_storage

    store = create_storage(url)
    pre = [decode_usage(r) for r in records(100_000, start=10**7)]
    for i in range(0, len(pre), 5000):
        store.save_many(pre[i:i + 5000])
    return store


def _fresh(n: int, start: int = 2 * 10**7) -> list:
    from usageledger.records import decode_usage

    return [decode_usage(r) for r in records(n, start=start)]


def _split(name: str, url: str, n: int, one_batch) -> None:
    """Where a store's save_many spends its time at batch 1,000 of fresh records, step by
    step, on a store already holding 100,000 records: ``one_batch(store, records)`` stores
    one batch and answers ``[(step, seconds), ...]``."""
    store = _preloaded(url)
    try:
        recs = _fresh(n)
        parts: dict[str, float] = {}
        for i in range(0, n, 1000):
            for step, spent in one_batch(store, recs[i:i + 1000]):
                parts[step] = parts.get(step, 0.0) + spent
        store.clear()
    finally:
        store.close()
    total = sum(parts.values())
    for step, spent in parts.items():
        row(f"{name} save_many, batch 1,000: {step}, per record", f"{spent / n * 1e6:.2f} µs",
            f"whole save_many {total / n * 1e6:.2f} µs", f"{spent / total:.0%}")


def _postgres_indexes(url: str, ddls: tuple[str, ...] | None = None) -> None:
    """What each secondary index of the usage table costs PostgreSQL's INSERT step per
    record at batch 1,000, on a table holding 100,000 records: in each round, the step
    timed with every index and with the index dropped (created again after), in
    alternating order; the cost is the median of the rounds' differences."""
    from usageledger.storage._sql import USAGE_INDEXES

    indexes = {ddl.split()[5]: ddl for ddl in ddls or USAGE_INDEXES}
    every_index = f"all {len(indexes)}"
    variants = [*indexes, every_index]
    per, rounds = 3, 12  # batches of 1,000 per measurement, rounds
    store = _preloaded(url)
    with store._pool.connection() as conn:  # ``ddls`` may name indexes the store does not make
        for ddl in indexes.values():
            conn.execute(ddl)
    recs = iter(_fresh(len(variants) * rounds * 2 * per * 1000))

    def insert_step(dropped: list[str]) -> float:
        with store._pool.connection() as conn:
            for name in dropped:
                conn.execute(f"DROP INDEX {name}")
        t = 0.0
        for _ in range(per):
            steps = _postgres_batch(store, [next(recs) for _ in range(1000)])
            t += sum(s for step, s in steps if step.startswith("INSERT"))
        with store._pool.connection() as conn:
            for name in dropped:
                conn.execute(indexes[name])
        return t / (per * 1000) * 1e6

    try:
        every: list[float] = []
        saved: dict[str, list[float]] = {v: [] for v in variants}
        for rnd in range(rounds):
            for v in variants:
                dropped = list(indexes) if v == every_index else [v]
                if rnd % 2:
                    without, with_all = insert_step(dropped), insert_step([])
                else:
                    with_all, without = insert_step([]), insert_step(dropped)
                every.append(with_all)
                saved[v].append(with_all - without)
        store.clear()
    finally:
        store.close()
    for v, diffs in saved.items():
        what = f"the index {v}" if v in indexes else f"{v} secondary indexes"
        row(f"postgres INSERT step, batch 1,000: what {what} {'costs' if v in indexes else 'cost'}, per record",
            f"{statistics.median(diffs):.2f} µs", f"INSERT step with every index {statistics.median(every):.2f} µs",
            f"{statistics.median(diffs) / statistics.median(every):.0%}")


class _Steps:
    """Seconds between ``mark(step)`` calls, from the moment it is made."""

    def __init__(self) -> None:
        self.spent: list[tuple[str, float]] = []
        self.t = time.perf_counter()

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.spent.append((step, now - self.t))
        self.t = now


def _sqlite_batch(store, recs) -> list[tuple[str, float]]:
    """SQLite's save_many by hand: the steps of ``SQLiteStorage._insert``, timed one by
    one. The WAL checkpoints run on the store's own thread, outside these steps, as in
    the store."""
    import usageledger.storage.sqlite as S
    from usageledger.storage.aggregate import rollup_deltas
    from usageledger.storage.base import unique_records

    steps = _Steps()
    batch = list(unique_records(recs).values())
    rows = [S.usage_row(r) for r in batch]
    steps.mark("rows (Python)")
    with store._db as c:  # the store's connection, under its lock
        c.execute("BEGIN IMMEDIATE")
        top = c.execute("SELECT COALESCE(MAX(rowid), 0) FROM usage").fetchone()[0]
        c.executemany(S._INSERT, rows)
        steps.mark("insert (table, id and 4 indexes)")
        new = {r[0] for r in c.execute(S._NEW_IDS, (top,))}
        steps.mark("new ids")
        hourly, daily = rollup_deltas((rec, row[1], row[10]) for rec, row in zip(batch, rows, strict=True)
                                      if rec.id in new)
        steps.mark("rollups added up (Python)")
        c.executemany(S._HOURLY_ADD, [(*k, *v) for k, v in sorted(hourly.items())])
        c.executemany(S._DAILY_ADD, [(*k, *v) for k, v in sorted(daily.items())])
        steps.mark("rollup upserts")
        c.execute("COMMIT")
        steps.mark("commit")
    store._checkpointer.wrote(len(new))
    return steps.spent


def _postgres_batch(store, recs) -> list[tuple[str, float]]:
    """PostgreSQL's save_many itself, each step timed through its ``mark`` hook."""
    import usageledger.storage.postgres as P
    from usageledger.storage.base import unique_records

    steps = _Steps()
    rows = [P._usage_row(r) for r in unique_records(recs).values()]
    steps.mark("staging rows (Python)")
    store._insert(rows, steps.mark)
    return steps.spent


def _postgres_statement(url: str, n: int) -> None:
    """The parts of PostgreSQL's one INSERT statement (the insert with its dedup and the
    table's b-trees, the hourly rollup, the daily rollups) from ``EXPLAIN (ANALYZE,
    BUFFERS)`` of each batch, at batch 1,000 on a table holding 100,000 records. EXPLAIN
    ANALYZE times every plan node, which inflates the totals; the shares are the point."""

    import usageledger.storage.postgres as P

    store = _preloaded(url)
    parts = {"CTE ins": 0.0, "CTE roll": 0.0, "CTE daily": 0.0}
    total = 0.0
    try:
        recs = _fresh(n)
        for i in range(0, n, 1000):
            rows = [P._usage_row(r) for r in recs[i:i + 1000]]
            with store._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                with cur.copy(P._COPY) as copy:
                    copy.set_types(P._COPY_TYPES)
                    for r in rows:
                        copy.write_row(r)
                (plan,) = cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + P._INSERT).fetchone()[0]
            total += plan["Execution Time"]
            for node in plan["Plan"].get("Plans", []):
                if node.get("Subplan Name") in parts:
                    parts[node["Subplan Name"]] += node["Actual Total Time"]
        store.clear()
    finally:
        store.close()
    names = {"CTE ins": "insert into usage (dedup, table and its b-trees)", "CTE roll": "hourly rollup",
             "CTE daily": "daily rollups (user, customer, session, tags, all)"}
    for key, spent in parts.items():
        row(f"postgres INSERT statement, batch 1,000 (EXPLAIN ANALYZE): {names[key]}, per record",
            f"{spent / n * 1e3:.2f} µs", f"whole statement {total / n * 1e3:.2f} µs", f"{spent / total:.0%}")


def _top10(rows: list[dict], key: str) -> list[tuple[str, Decimal]]:
    rows = sorted(rows, key=lambda g: g["cost"], reverse=True)[:10]
    return [(g[key], g["cost"]) for g in rows]


def _median_ms(fn, runs: int = 7) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_totals(storages: dict[str, str], tmp: Path, n: int) -> None:
    """Top 10 users, customers and tag values by cost over all the records, ours against
    DuckDB on the same rows (a plain table, the tag as its own column)."""
    import csv

    import duckdb

    from usageledger.records import UsageRecord, new_id
    from usageledger.storage import create_storage

    t_start = time.perf_counter()
    stamps = [T0 + timedelta(seconds=s) for s in range(0, 30 * 86400, 30 * 86400 // 10_000)]
    recs = [UsageRecord(
        new_id(), stamps[i * 10_000 // n], "openai", f"model-{i % 10}", 100 + i % 900, 20 + i % 300,
        0, 0, 0, Decimal(10_000 + i % 77_777).scaleb(-9), "USD", f"user-{(i * 7919) % 1000}",
        f"sess-{i // 20}", f"cust-{(i * 31) % 100}", tags={"team": f"t{i % 10}"},
    ) for i in range(n)]
    path = tmp / "rows.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        for r in recs:
            w.writerow((r.id, r.timestamp.isoformat(), r.model, r.input_tokens, r.output_tokens,
                        r.cost, r.user_id, r.customer_key, r.session_id, r.tags["team"]))
    duck = duckdb.connect()
    duck.execute(f"""CREATE TABLE usage AS SELECT * FROM read_csv('{path}', header=false, columns={{
        'id': 'VARCHAR', 'ts': 'TIMESTAMPTZ', 'model': 'VARCHAR', 'input_tokens': 'BIGINT',
        'output_tokens': 'BIGINT', 'cost': 'DECIMAL(18,9)', 'user_id': 'VARCHAR',
        'customer_key': 'VARCHAR', 'session_id': 'VARCHAR', 'team': 'VARCHAR'}})""")
    print(f"built {n:,} records and the DuckDB table in {time.perf_counter() - t_start:.0f} s", flush=True)
    queries = {"user": ("user_id", "user_id"), "customer": ("customer_key", "customer_key"),
               "tag": ("tag:team", "team")}

    def duck_top(column: str, since: datetime | None = None, until: datetime | None = None
                 ) -> list[tuple[str, Decimal]]:
        where = "" if since is None else f" WHERE ts >= '{since.isoformat()}' AND ts < '{until.isoformat()}'"
        rows = duck.execute(
            f"SELECT {column}, count(*), sum(input_tokens), sum(output_tokens), sum(cost) AS c "
            f"FROM usage{where} GROUP BY 1 ORDER BY c DESC LIMIT 10").fetchall()
        return [(r[0], r[4]) for r in rows]

    # a range that is no whole month (the records span one calendar month): whole days
    # from the day rows, the two partial days from the records
    since, until = T0 + timedelta(days=4, hours=7), T0 + timedelta(days=24, hours=19)

    for name, url in storages.items():
        store = create_storage(url)
        store.clear()
        t0 = time.perf_counter()
        for i in range(0, n, 50_000):
            store.save_many(recs[i:i + 50_000])
        print(f"loaded {n:,} records into {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        for what, (key, column) in queries.items():
            ours = _top10(store.aggregate((key,)), key)
            if ours != duck_top(column):
                raise RuntimeError(f"{name} per {what}: {ours} != {duck_top(column)}")
            duck_ms = _median_ms(lambda column=column: duck_top(column))
            ours_ms = _median_ms(lambda key=key, store=store: _top10(store.aggregate((key,)), key))
            row(f"{n:,} records: top 10 per {what} by cost, {name} aggregate (daily totals)",
                f"{ours_ms:.1f} ms", f"DuckDB {duck_ms:.1f} ms", f"{ours_ms / duck_ms:.2f}x")
            # the same totals read from the records, as they were before the daily totals
            # (every record is from provider openai: the filter only forces the scan)
            scan_ms = _median_ms(
                lambda key=key, store=store: _top10(store.aggregate((key,), provider="openai"), key), 3)
            row(f"{n:,} records: top 10 per {what}, {name}, read from the records (before)",
                f"{scan_ms:.1f} ms", f"DuckDB {duck_ms:.1f} ms", f"{scan_ms / duck_ms:.2f}x")
            ours = _top10(store.aggregate((key,), since=since, until=until), key)
            if ours != duck_top(column, since, until):
                raise RuntimeError(f"{name} per {what}, days 4-24: {ours} != {duck_top(column, since, until)}")
            duck_ms = _median_ms(lambda column=column: duck_top(column, since, until))
            ours_ms = _median_ms(lambda key=key, store=store: _top10(
                store.aggregate((key,), since=since, until=until), key))
            row(f"{n:,} records: top 10 per {what} by cost over 20.5 days (day rows + 2 partial days), "
                f"{name}", f"{ours_ms:.1f} ms", f"DuckDB {duck_ms:.1f} ms", f"{ours_ms / duck_ms:.2f}x")
        store.clear()
        store.close()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _bare_process() -> Iterator[tuple[str, int]]:
    """The bare receiver (tests/support/receiver.py), with its process id."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.receiver", "--port", str(port)],
                            cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def bench_wire(n: int, rounds: int) -> None:
    """Collector on memory storage against the bare receiver at batch 100 and 1,000,
    ``rounds`` alternating pairs, each on a fresh process: records per second, and the
    server process's CPU time per record (user + system, all threads: steadier than the
    rate on a shared box). Medians."""
    from usageledger.records import decode_usage
    from usageledger.storage import create_storage

    recs = [decode_usage(r) for r in records(n, start=3 * 10**7)]
    store = create_storage("memory")
    t0 = time.process_time()
    for i in range(0, n, 1000):
        store.save_many(recs[i:i + 1000])
    store_us = (time.process_time() - t0) / n * 1e6
    for batch in (100, 1000):
        rates: dict[str, list[float]] = {"ours": [], "bare": []}
        cpus: dict[str, list[float]] = {"ours": [], "bare": []}
        for k in range(rounds):
            with _bare_process() as (url, pid):
                before = _cpu_s(pid)
                rates["bare"].append(load(url, n, batch, 1))
                cpus["bare"].append((_cpu_s(pid) - before) / n * 1e6)
            col = Collector("memory://").start(timeout=180)
            try:
                before = _cpu_s(col.proc.pid)
                rates["ours"].append(load(col.url, n, batch, 1))
                cpus["ours"].append((_cpu_s(col.proc.pid) - before) / n * 1e6)
            finally:
                col.stop()
            print(f"batch {batch}, round {k + 1}: collector {rates['ours'][-1]:,.0f} rec/s, "
                  f"{cpus['ours'][-1]:.1f} µs CPU per record; bare {rates['bare'][-1]:,.0f} rec/s, "
                  f"{cpus['bare'][-1]:.1f} µs", flush=True)
        rate, bare_rate = statistics.median(rates["ours"]), statistics.median(rates["bare"])
        cpu, bare_cpu = statistics.median(cpus["ours"]), statistics.median(cpus["bare"])
        row(f"ingest -> collector -> memory, batch {batch:,}, 1 worker, 1 client (median of {rounds})",
            f"{rate:,.0f} rec/s", f"bare ASGI {bare_rate:,.0f} rec/s", f"{rate / bare_rate:.3f}x")
        row(f"collector process on memory, CPU per record (batch {batch:,})", f"{cpu:.2f} µs",
            f"bare ASGI {bare_cpu:.2f} µs", f"{cpu / bare_cpu:.1f}x")
        row(f"of which beyond the bare app, less the memory store's save_many (in-process "
            f"{store_us:.2f} µs), batch {batch:,}", f"{cpu - bare_cpu - store_us:.2f} µs", "", "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--only", default="ingest,stack,drain,breakdown,totals,wire",
                    help="comma-separated parts: ingest, stack, drain, breakdown, totals, wire")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the wire part")
    ap.add_argument("--workers", default="1,2,4", help="worker counts for the ingest part")
    ap.add_argument("--stores", default="sqlite,postgres")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    n = 20_000 if args.quick else 100_000
    print("| figure | measured | baseline (same run) | ratio |\n|---|---|---|---|")
    pg = start_postgres()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            storages = {"sqlite": f"sqlite:///{tmp}/ingest.db", "postgres": pg.url}
            storages = {k: v for k, v in storages.items() if k in args.stores.split(",")}
            if "ingest" in parts:
                bench_ingest(storages, n, tuple(int(w) for w in args.workers.split(",")))
            if "stack" in parts:
                bench_stack(f"sqlite:///{tmp}/stack.db", n)
            if "drain" in parts:
                with run_receiver() as bare_url:
                    bench_drain(bare_url, tmp, n)
            if "breakdown" in parts:
                bench_breakdown({"sqlite": f"sqlite:///{tmp}/breakdown.db", "postgres": pg.url}, n)
            if "totals" in parts:
                totals = {"sqlite": f"sqlite:///{tmp}/totals.db", "postgres": pg.url}
                bench_totals({k: v for k, v in totals.items() if k in storages}, tmp,
                             100_000 if args.quick else 1_000_000)
            if "wire" in parts:
                bench_wire(100_000, args.rounds)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
