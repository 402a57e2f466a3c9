"""Collector benchmarks (issue 3). Run by hand:
`.venv/bin/python bench/bench_collector.py [--quick]`.

1. ingest: a client posting `/api/v1/track` batches of 100 and 1,000 fresh records over
   HTTP (keep-alive, one connection, uncompressed) to the collector in its own uvicorn
   process, on SQLite and on PostgreSQL; baseline: the same bodies posted the same way to
   a bare ASGI receiver (reads the body, answers 200) in the same run;
2. end-to-end drain: a PersistentDelivery journal holding N records -> HttpSink (gzip
   level 1, the default) -> collector -> SQLite, at batch 100 (the default) and 1,000;
   baseline: the same drain into the bare receiver;
3. where an ingest request's time goes, in-process per record at batch 1,000: the wire
   (decode_track: msgspec decode + checks; baseline: the bare msgspec decode of the same
   body into UsageRecords), pricing of records sent without cost, and the storage's
   save_many (SQLite, PostgreSQL).

Every figure is printed with its baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.server.support import Collector  # noqa: E402
from tests.support.receiver import run_receiver  # noqa: E402
from tests.support.servers import start_postgres  # noqa: E402
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


def records(n: int, priced: bool = True) -> list[bytes]:
    """Encoded records with fresh ids, spread over 30 days, 3 models, 50 users."""
    return [encode(make_usage_record(
        "openai", MODELS[i % 3], 100 + i % 900, 20 + i % 300,
        cost="0.00012" if priced else None, user_id=f"user-{i % 50}",
        timestamp=T0 + timedelta(seconds=i * 26),
    )) for i in range(n)]


def bodies(recs: list[bytes], batch: int) -> list[bytes]:
    return [b'{"tracked":[' + b",".join(recs[i:i + batch]) + b"]}" for i in range(0, len(recs), batch)]


def post_all(url: str, payloads: list[bytes], batch: int) -> float:
    """Records per second posting every body in turn on one keep-alive connection."""
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=60) as c:
        c.post(url + "/api/v1/track", content=payloads[0], headers=headers)  # warm up
        t0 = time.perf_counter()
        for body in payloads[1:]:
            r = c.post(url + "/api/v1/track", content=body, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
        elapsed = time.perf_counter() - t0
    return (len(payloads) - 1) * batch / elapsed


def bench_ingest(bare_url: str, storages: dict[str, str], n: int) -> None:
    for batch in (100, 1000):
        bare = post_all(bare_url, bodies(records(n), batch), batch)
        for name, storage in storages.items():
            with Collector(storage) as col:
                rate = post_all(col.url, bodies(records(n), batch), batch)
            row(f"ingest POST /track -> collector -> {name}, batch {batch:,}",
                f"{rate:,.0f} rec/s", f"bare ASGI {bare:,.0f} rec/s", f"{rate / bare:.2f}x")
    name, storage = next(iter(storages.items()))
    bare = post_all(bare_url, bodies(records(n, priced=False), 1000), 1000)
    with Collector(storage) as col:
        rate = post_all(col.url, bodies(records(n, priced=False), 1000), 1000)
    row(f"ingest, records without cost (priced by the collector) -> {name}, batch 1,000",
        f"{rate:,.0f} rec/s", f"bare ASGI {bare:,.0f} rec/s", f"{rate / bare:.2f}x")


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    args = ap.parse_args()
    n = 20_000 if args.quick else 100_000
    print("| figure | measured | baseline (same run) | ratio |\n|---|---|---|---|")
    pg = start_postgres()
    try:
        with tempfile.TemporaryDirectory() as d, run_receiver() as bare_url:
            tmp = Path(d)
            storages = {"sqlite": f"sqlite:///{tmp}/ingest.db", "postgres": pg.url}
            bench_ingest(bare_url, storages, n)
            bench_drain(bare_url, tmp, n)
            bench_breakdown({"sqlite": f"sqlite:///{tmp}/breakdown.db", "postgres": pg.url}, n)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
