"""Embedded store in one SQLite file (the default): WAL, an expiry column, lazy expiry on
read plus a periodic sweep, file mode 0600.

Each store owns one connection on one dedicated thread; every call is handed to that
thread and awaited, so the event loop never blocks on disk. The same thread deletes
expired rows every ``sweep_interval`` seconds (default 60), between calls. Any number of
processes may open the same file: single-statement writes (``incr`` is one
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``) and ``BEGIN IMMEDIATE`` transactions
keep every call atomic across processes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..core._sqlite import connect_wal, transaction
from .base import (
    MISSING,
    TTL,
    KVError,
    KVStore,
    KVTypeError,
    check_members,
    prefix_upper_bound,
)

__all__ = ["SqliteKVStore"]

log = logging.getLogger("usageledger.kv")

VALUE, SET = 0, 1

# `kind` tells a plain value from a set, whose members live in kv_members. The triggers keep
# members from outliving their key however the key goes (delete, expiry sweep, overwrite by
# set/incr), in the same statement, so no code path can forget them.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value,
    expires REAL,
    kind INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv(expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS kv_members (
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (key, member)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS kv_set_deleted AFTER DELETE ON kv WHEN old.kind = 1
BEGIN DELETE FROM kv_members WHERE key = old.key; END;
CREATE TRIGGER IF NOT EXISTS kv_set_replaced AFTER UPDATE OF kind ON kv
WHEN old.kind = 1 AND new.kind != 1
BEGIN DELETE FROM kv_members WHERE key = old.key; END;
"""

_LIVE = "(expires IS NULL OR expires > :now)"
_DEAD = "(kv.expires IS NOT NULL AND kv.expires <= :now)"

_UPSERT = """
INSERT INTO kv (key, value, expires, kind) VALUES (:key, :value, :expires, 0)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, kind = 0
"""

# One statement: atomic across threads and processes. An expired row restarts from
# `amount` with a fresh expiry; a live non-integer makes the WHERE false and returns no row.
_INCR = f"""
INSERT INTO kv (key, value, expires, kind) VALUES (:key, :amount, :expires, 0)
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN {_DEAD} THEN :amount ELSE kv.value + :amount END,
    expires = CASE WHEN {_DEAD} THEN :expires ELSE kv.expires END,
    kind = 0
WHERE {_DEAD} OR (kv.kind = 0 AND typeof(kv.value) = 'integer')
RETURNING value
"""

_CAS_ABSENT = f"""
INSERT INTO kv (key, value, expires, kind) VALUES (:key, :value, :expires, 0)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, kind = 0
WHERE {_DEAD}
"""

_CAS = f"""
UPDATE kv SET value = :value, expires = :expires
WHERE key = :key AND kind = 0 AND value IS :expected AND {_LIVE}
"""


class _Worker(threading.Thread):
    """The one thread that touches the connection: runs submitted calls in order and
    sweeps expired rows every ``sweep_interval`` seconds between calls."""

    def __init__(self, path: Path, busy_timeout_ms: int, sweep_interval: float):
        super().__init__(name=f"usageledger-kv-sqlite:{path.name}", daemon=True)
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.sweep_interval = sweep_interval
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.open_error: BaseException | None = None
        self.conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return connect_wal(self.path, busy_timeout_ms=self.busy_timeout_ms, schema=_SCHEMA)

    def run(self) -> None:
        try:
            self.conn = self._open()
        except BaseException as exc:
            self.open_error = exc
            self.ready.set()
            return
        self.ready.set()
        next_sweep = time.monotonic() + self.sweep_interval
        while True:
            if time.monotonic() >= next_sweep:  # also under constant load, not only when idle
                self._sweep()
                next_sweep = time.monotonic() + self.sweep_interval
            try:
                job = self.jobs.get(timeout=max(next_sweep - time.monotonic(), 0.0))
            except queue.Empty:
                continue
            # run what is queued now, then wake each caller's loop once for the whole batch:
            # concurrent callers share one cross-thread wake-up instead of paying one each
            done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]] = {}
            stop = False
            for _ in range(256):
                if job is None:
                    stop = True
                    break
                fn, fut, loop = job
                done.setdefault(loop, []).append((fut, *self._call(fn)))
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
            else:
                self.jobs.put(job)  # batch full: back in the queue, behind later arrivals
            for loop, results in done.items():
                with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                    loop.call_soon_threadsafe(_resolve, results)
            if stop:
                break
        self.conn.close()

    def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
        try:
            return True, fn(self.conn)  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the awaiting task
            if self.conn.in_transaction:  # type: ignore[union-attr]
                with contextlib.suppress(sqlite3.Error):
                    self.conn.rollback()  # type: ignore[union-attr]
            return False, exc

    def _sweep(self) -> None:
        try:
            while True:
                cur = self.conn.execute(  # type: ignore[union-attr]
                    "DELETE FROM kv WHERE key IN "
                    "(SELECT key FROM kv WHERE expires <= ? LIMIT 5000)",
                    (time.time(),),
                )
                if cur.rowcount < 5000:
                    break
        except sqlite3.Error as exc:  # a busy file: try again next interval
            log.warning("KV sweep of %s failed: %s", self.path, exc)


def _resolve(results: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for fut, ok, result in results:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(result)
        else:
            fut.set_exception(result)


class SqliteKVStore(KVStore):
    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sweep_interval: float = 60.0,
        busy_timeout_ms: int = 10_000,
        **kw: Any,
    ):
        super().__init__(**kw)
        self.path = Path(path).expanduser()
        self._worker = _Worker(self.path, busy_timeout_ms, sweep_interval)
        self._worker.start()
        self._worker.ready.wait()
        if self._worker.open_error is not None:
            raise KVError(f"cannot open KV store {self.path}: {self._worker.open_error}") from (
                self._worker.open_error
            )
        self._closed = False

    def __repr__(self) -> str:
        return f"<SqliteKVStore {str(self.path)!r} prefix={self.key_prefix!r}>"

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed:
            raise KVError(f"KV store {self.path} is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._worker.jobs.put((fn, fut, loop))
        try:
            return await fut
        except sqlite3.Error as exc:
            raise KVError(f"KV store {self.path}: {exc}") from exc

    @staticmethod
    def _exp(seconds: float | None) -> float | None:
        return None if seconds is None else time.time() + seconds

    # -- contract -------------------------------------------------------------------------
    async def get(self, key: str, default: Any = None) -> Any:
        full = self._k(key)

        def op(c: sqlite3.Connection) -> Any:
            row = c.execute("SELECT value, expires, kind FROM kv WHERE key = ?", (full,)).fetchone()
            if row is None:
                return MISSING
            value, expires, kind = row
            if expires is not None and expires <= time.time():
                # lazy expiry; the condition guards against a concurrent fresh write
                c.execute("DELETE FROM kv WHERE key = ? AND expires <= ?", (full, time.time()))
                return MISSING
            if kind == SET:
                raise KVTypeError(f"key {key!r} holds a set; use smembers()")
            return value

        raw = await self._run(op)
        return default if raw is MISSING else self.codec.decode(raw, key)

    async def set(self, key: str, value: Any, ttl: TTL = None) -> None:
        params = {"key": self._k(key), "value": self.codec.encode_native(value, key)}
        exp = self._ttl(ttl)

        def op(c: sqlite3.Connection) -> None:
            c.execute(_UPSERT, {**params, "expires": self._exp(exp)})

        await self._run(op)

    async def delete(self, *keys: str) -> int:
        fulls = [(self._k(k),) for k in keys]
        now = time.time()

        def op(c: sqlite3.Connection) -> int:
            live = 0
            with transaction(c):
                for (full,) in fulls:
                    cur = c.execute("DELETE FROM kv WHERE key = ? RETURNING expires", (full,))
                    live += sum(1 for (exp,) in cur.fetchall() if exp is None or exp > now)
            return live

        return await self._run(op)

    async def exists(self, key: str) -> bool:
        full = self._k(key)

        def op(c: sqlite3.Connection) -> bool:
            sql = f"SELECT 1 FROM kv WHERE key = :key AND {_LIVE}"
            return c.execute(sql, {"key": full, "now": time.time()}).fetchone() is not None

        return await self._run(op)

    async def incr(self, key: str, amount: int = 1, ttl: TTL = None) -> int:
        if type(amount) is not int:
            raise TypeError(f"amount={amount!r} must be an int")
        full, exp = self._k(key), self._ttl(ttl)

        def op(c: sqlite3.Connection) -> Any:
            now = time.time()
            params = {"key": full, "amount": amount, "now": now,
                      "expires": None if exp is None else now + exp}
            return c.execute(_INCR, params).fetchone()

        row = await self._run(op)
        if row is None:
            raise KVTypeError(f"key {key!r} does not hold an integer; incr() needs one")
        return row[0]

    async def keys(self, prefix: str = "") -> list[str]:
        low = self._k(prefix)
        high = prefix_upper_bound(low)

        def op(c: sqlite3.Connection) -> list[str]:
            # a range on the primary key: the scan stops at the end of the prefix
            sql = f"SELECT key FROM kv WHERE key >= :low AND {_LIVE}"
            if high is not None:
                sql += " AND key < :high"
            rows = c.execute(sql + " ORDER BY key", {"low": low, "high": high, "now": time.time()})
            return [r[0] for r in rows]

        return [self._strip(k) for k in await self._run(op)]

    async def mget(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = {self._k(k): k for k in keys}

        def op(c: sqlite3.Connection) -> list[tuple[str, Any]]:
            out: list[tuple[str, Any]] = []
            names = list(wanted)
            for i in range(0, len(names), 500):  # stay under SQLite's parameter limit
                chunk = names[i:i + 500]
                marks = ",".join("?" * len(chunk))
                out += c.execute(
                    f"SELECT key, value FROM kv WHERE key IN ({marks}) AND kind = 0 "
                    "AND (expires IS NULL OR expires > ?)",
                    (*chunk, time.time()),
                ).fetchall()
            return out

        return {wanted[full]: self.codec.decode(raw, wanted[full]) for full, raw in await self._run(op)}

    async def mset(self, mapping: Mapping[str, Any], ttl: TTL = None) -> None:
        rows = [{"key": self._k(k), "value": self.codec.encode_native(v, k)} for k, v in mapping.items()]
        exp = self._ttl(ttl)

        def op(c: sqlite3.Connection) -> None:
            expires = self._exp(exp)
            with transaction(c):
                c.executemany(_UPSERT, [{**r, "expires": expires} for r in rows])

        if rows:
            await self._run(op)

    async def expire(self, key: str, ttl: TTL) -> bool:
        full, exp = self._k(key), self._ttl(ttl)

        def op(c: sqlite3.Connection) -> bool:
            now = time.time()
            cur = c.execute(
                f"UPDATE kv SET expires = :expires WHERE key = :key AND {_LIVE}",
                {"key": full, "now": now, "expires": None if exp is None else now + exp},
            )
            return cur.rowcount == 1

        return await self._run(op)

    async def ttl(self, key: str) -> float | None:
        full = self._k(key)

        def op(c: sqlite3.Connection) -> float | None:
            now = time.time()
            row = c.execute(
                f"SELECT expires FROM kv WHERE key = :key AND {_LIVE}", {"key": full, "now": now}
            ).fetchone()
            return None if row is None or row[0] is None else max(row[0] - now, 0.0)

        return await self._run(op)

    async def compare_and_set(self, key: str, expected: Any, new: Any, ttl: TTL = None) -> bool:
        full, exp = self._k(key), self._ttl(ttl)
        params = {"key": full, "value": self.codec.encode_native(new, key)}
        if expected is not MISSING:
            params["expected"] = self.codec.encode_native(expected, key)

        def op(c: sqlite3.Connection) -> bool:
            now = time.time()
            p = {**params, "now": now, "expires": None if exp is None else now + exp}
            if c.execute(_CAS_ABSENT if expected is MISSING else _CAS, p).rowcount == 1:
                return True
            sql = f"SELECT 1 FROM kv WHERE key = :key AND kind = 1 AND {_LIVE}"
            if c.execute(sql, p).fetchone() is not None:
                raise KVTypeError(f"key {key!r} holds a set; compare_and_set() needs a value")
            return False

        return await self._run(op)

    def _set_kind(self, c: sqlite3.Connection, full: str, key: str, purge: bool = True) -> bool:
        """Inside a transaction: whether a live set exists at ``full``; raises if a live
        plain value is there. ``purge`` drops an expired row (write transactions only: a
        read transaction that starts writing can fail if another process wrote meanwhile;
        readers leave expired rows to the sweep)."""
        row = c.execute("SELECT kind, expires FROM kv WHERE key = ?", (full,)).fetchone()
        if row is None:
            return False
        kind, expires = row
        if expires is not None and expires <= time.time():
            if purge:
                c.execute("DELETE FROM kv WHERE key = ?", (full,))
            return False
        if kind != SET:
            raise KVTypeError(f"key {key!r} holds a value, not a set")
        return True

    async def sadd(self, key: str, *members: str, ttl: TTL = None) -> int:
        full, exp, items = self._k(key), self._ttl(ttl), check_members(members)

        def op(c: sqlite3.Connection) -> int:
            with transaction(c):
                if not self._set_kind(c, full, key):
                    if not items:
                        return 0
                    c.execute("INSERT INTO kv (key, value, expires, kind) VALUES (?, NULL, NULL, 1)", (full,))
                before = c.total_changes
                c.executemany(
                    "INSERT OR IGNORE INTO kv_members (key, member) VALUES (?, ?)",
                    [(full, m) for m in items],
                )
                added = c.total_changes - before
                if exp is not None:
                    c.execute("UPDATE kv SET expires = ? WHERE key = ?", (time.time() + exp, full))
            return added

        return await self._run(op)

    async def srem(self, key: str, *members: str) -> int:
        full, items = self._k(key), check_members(members)

        def op(c: sqlite3.Connection) -> int:
            removed = 0
            with transaction(c):
                if self._set_kind(c, full, key):
                    before = c.total_changes
                    c.executemany(
                        "DELETE FROM kv_members WHERE key = ? AND member = ?", [(full, m) for m in items]
                    )
                    removed = c.total_changes - before
                    if c.execute("SELECT 1 FROM kv_members WHERE key = ? LIMIT 1", (full,)).fetchone() is None:
                        c.execute("DELETE FROM kv WHERE key = ?", (full,))
            return removed

        return await self._run(op)

    def _read_set(self, key: str, query: str, *args: Any) -> Any:
        full = self._k(key)

        def op(c: sqlite3.Connection) -> Any:
            with transaction(c, immediate=False):  # one snapshot for both reads
                live = self._set_kind(c, full, key, purge=False)
                return c.execute(query, (full, *args)).fetchall() if live else []

        return self._run(op)

    async def smembers(self, key: str) -> set[str]:
        rows = await self._read_set(key, "SELECT member FROM kv_members WHERE key = ?")
        return {r[0] for r in rows}

    async def scard(self, key: str) -> int:
        rows = await self._read_set(key, "SELECT count(*) FROM kv_members WHERE key = ?")
        return rows[0][0] if rows else 0

    async def sismember(self, key: str, member: str) -> bool:
        check_members([member])
        rows = await self._read_set(key, "SELECT 1 FROM kv_members WHERE key = ? AND member = ?", member)
        return bool(rows)

    async def clear(self) -> int:
        low = self.key_prefix
        high = prefix_upper_bound(low)

        def op(c: sqlite3.Connection) -> int:
            sql = "DELETE FROM kv WHERE key >= :low" + (" AND key < :high" if high is not None else "")
            cur = c.execute(sql + " RETURNING expires", {"low": low, "high": high})
            now = time.time()
            return sum(1 for (exp,) in cur.fetchall() if exp is None or exp > now)

        return await self._run(op)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.jobs.put(None)
        await asyncio.to_thread(self._worker.join)
