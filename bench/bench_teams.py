"""Project keys and retention. Run by hand: `.venv/bin/python bench/bench_teams.py [--quick]`.

1. The cost of checking a project key on every request (no cache, so a revocation holds
   at once): ``Authenticator.stored()`` (one primary-key read of ``api_keys`` plus one
   HMAC-SHA256) on SQLite and on PostgreSQL, against the constant-time comparison of a
   global key (baseline, same run); and ``GET /api/v1/usage?limit=1`` in-process with a
   project key against the same request with a global key.
2. Retention: records folded per second (SQLite and PostgreSQL, batches of 5,000), and
   ``aggregate(("day",))`` / ``aggregate(("user_id",))`` before and after (ratio).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient  # noqa: E402
from starlette.requests import Request  # noqa: E402

from tests.support.servers import start_postgres  # noqa: E402
from usageledger.records import UsageRecord  # noqa: E402
from usageledger.retention import apply_retention  # noqa: E402
from usageledger.server.app import create_app  # noqa: E402
from usageledger.server.auth import Authenticator, new_key  # noqa: E402
from usageledger.storage import create_storage  # noqa: E402

GLOBAL = "bench-global-key-0123456789"


def _request(token: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/api/v1/usage", "headers":
                    [(b"authorization", f"Bearer {token}".encode())], "query_string": b""})


def per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def key_check(url: str, n: int) -> None:
    store = create_storage(url)
    try:
        row, token = new_key("a", "read")
        store.put_key(row)
        for _ in range(50):  # keys of other projects in the table
            store.put_key(new_key("b", "read")[0])
        auth = Authenticator(store, [GLOBAL.encode()], lambda r: None, lambda r: False)
        stored, glob = _request(token), _request(GLOBAL)
        auth.principal(stored)
        us_stored = per_call(lambda: auth.principal(stored), n)
        us_global = per_call(lambda: auth.principal(glob), n)
        print(f"| {url.split(':')[0]} | principal(), project key | {us_stored:.1f} us | "
              f"global key {us_global:.1f} us | x{us_stored / us_global:.0f} |")
        with TestClient(create_app(store, api_keys=[GLOBAL])) as c:
            for key in (token, GLOBAL):
                c.get("/api/v1/usage?limit=1", headers={"Authorization": f"Bearer {key}"})
            ms_stored = per_call(lambda: c.get("/api/v1/usage?limit=1",
                                               headers={"Authorization": f"Bearer {token}"}), n // 10) / 1000
            ms_global = per_call(lambda: c.get("/api/v1/usage?limit=1",
                                               headers={"Authorization": f"Bearer {GLOBAL}"}), n // 10) / 1000
        print(f"| {url.split(':')[0]} | GET /api/v1/usage?limit=1 | {ms_stored:.2f} ms | "
              f"global key {ms_global:.2f} ms | x{ms_stored / ms_global:.2f} |")
    finally:
        store.close()


def retention(url: str, n: int) -> None:
    store = create_storage(url)
    try:
        store.clear()
        rnd = random.Random(1)
        now = datetime.now(UTC)
        recs = [UsageRecord(id=f"r{i}", timestamp=now - timedelta(seconds=rnd.randrange(90 * 86400)),
                            provider="openai", model=rnd.choice(["m1", "m2"]), input_tokens=rnd.randrange(999),
                            output_tokens=rnd.randrange(999), cost=Decimal(rnd.randrange(10**6)) / 10**9,
                            user_id=f"u{rnd.randrange(100)}", tags={"usageledger_project": rnd.choice("ab")})
                for i in range(n)]
        for i in range(0, n, 5000):
            store.save_many(recs[i:i + 5000])

        def timed(keys: tuple[str, ...]) -> float:
            start = time.perf_counter()
            store.aggregate(keys)
            return (time.perf_counter() - start) * 1000

        before = {k: timed(k) for k in (("day",), ("user_id",))}
        start = time.perf_counter()
        done = apply_retention(store, 30, now=now)
        took = time.perf_counter() - start
        after = {k: timed(k) for k in (("day",), ("user_id",))}
        print(f"| {url.split(':')[0]} | {n:,} records, {done['records']:,} folded | "
              f"{done['records'] / took:,.0f} records/s | "
              + " | ".join(f"{'/'.join(k)}: {before[k]:.1f} -> {after[k]:.1f} ms" for k in before) + " |")
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_calls = 500 if args.quick else 3000
    n_records = 20_000 if args.quick else 200_000
    pg = start_postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pg_url = pg.url.rsplit("/", 1)[0] + "/postgres"
            import psycopg

            name = f"bench_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            pg_url = pg.url.rsplit("/", 1)[0] + "/" + name
            print("| store | what | project key | baseline | ratio |\n|---|---|---|---|---|")
            key_check(f"sqlite:///{tmp}/keys.db", n_calls)
            key_check(pg_url, n_calls)
            print("\n| store | records | fold rate | aggregate before -> after |\n|---|---|---|---|")
            retention(f"sqlite:///{tmp}/ret.db", n_records)
            retention(pg_url, n_records)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
