"""SQLite specifics: WAL, private file, the periodic sweep (seen from a second connection,
without any read through the store), stores sharing one file."""

from __future__ import annotations

import asyncio
import sqlite3
import stat

from usageledger.kv import SqliteKVStore

from .conftest import eventually


def _rows(path) -> tuple[int, int]:
    with sqlite3.connect(path) as c:
        return (c.execute("SELECT count(*) FROM kv").fetchone()[0],
                c.execute("SELECT count(*) FROM kv_members").fetchone()[0])


def test_wal_private_file_and_sweep(tmp_path):
    path = tmp_path / "kv.db"

    async def main():
        store = SqliteKVStore(path, sweep_interval=0.1)
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            with sqlite3.connect(path) as c:
                assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            await store.mset({f"k{i}": i for i in range(100)}, ttl=0.4)
            await store.sadd("set", *[f"m{i}" for i in range(50)], ttl=0.4)
            await store.set("keep", 1)
            assert _rows(path) == (102, 50)

            async def swept() -> bool:
                return _rows(path) == (1, 0)

            await eventually(swept)  # expired rows and their set members are gone
        finally:
            await store.close()

    asyncio.run(main())


def test_two_stores_on_one_file(tmp_path):
    path = tmp_path / "shared.db"

    async def main():
        a, b = SqliteKVStore(path, key_prefix="p:"), SqliteKVStore(path, key_prefix="p:")
        try:
            await asyncio.gather(*(s.incr("n") for _ in range(100) for s in (a, b)))
            assert await a.get("n") == 200
            await a.set("x", "from a")
            assert await b.get("x") == "from a"
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())
