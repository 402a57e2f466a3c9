"""SQLite storage: the embedded default. WAL, exact money, self-migrating schema.

Money: ``cost`` is kept as exact TEXT, and also as integer nano-units (``cost_nano``)
whenever that is exact, so sums run in integer arithmetic inside SQLite; a cost with more
than nine decimals keeps ``cost_nano`` NULL and is summed from its text in Python.
Nothing is rounded.

An hourly rollup (``usage_hourly``: hour x provider x model) is maintained in the same
transaction as every insert, so ``aggregate`` by day/hour/provider/model with provider,
model and hour-aligned time filters reads a few thousand rows instead of every record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from .._sqlite import connect_wal
from ..records import UsageRecord
from ._budgets import SqlBudgets
from ._sql import (
    RUNS_INDEX,
    USAGE_INDEXES,
    filter_clauses,
    group_by_sql,
    group_value,
    keyset_pages,
    rollup_where,
    runs_query_sql,
    where_sql,
)
from .base import (
    _US_PER_DAY,
    _US_PER_HOUR,
    Aggregate,
    Filters,
    RunWrite,
    StorageBackend,
    apply_run_write,
    cost_nano,
    finish_groups,
    from_us,
    make_filters,
    nano_to_decimal,
    rollup_fits,
    run_fields,
    ts_us,
    unique_records,
    zero_totals,
)

__all__ = ["SQLiteStorage", "USAGE_COLUMNS"]

log = logging.getLogger("usageledger.storage.sqlite")

#: column -> declaration; a file missing any of these gets them added at open
USAGE_COLUMNS: dict[str, str] = {
    "id": "TEXT PRIMARY KEY",
    "ts": "INTEGER NOT NULL",
    "provider": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "output_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_read_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
    "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cost": "TEXT",
    "cost_nano": "INTEGER",
    "currency": "TEXT NOT NULL DEFAULT 'USD'",
    "user_id": "TEXT",
    "session_id": "TEXT",
    "customer_key": "TEXT",
    "run_id": "TEXT",
    "response_id": "TEXT",
    "tags": "TEXT NOT NULL DEFAULT '{}'",
    "payload": "TEXT",
}
_COLS = tuple(USAGE_COLUMNS)
_STAGE = f"INSERT INTO temp.usage_in ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})"
_INSERT_NEW = (
    f"INSERT INTO usage ({', '.join(_COLS)}) SELECT {', '.join(_COLS)} FROM temp.usage_in "
    "WHERE true ON CONFLICT (id) DO NOTHING RETURNING id"
)
_SELECT = (
    "SELECT id, ts, provider, model, input_tokens, output_tokens, cache_read_tokens, "
    "cache_write_tokens, reasoning_tokens, cost, currency, user_id, session_id, customer_key, "
    "run_id, response_id, tags, payload FROM usage"
)
_ROLLUP = """CREATE TABLE IF NOT EXISTS usage_hourly (
    hour INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
    count INTEGER NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, cost_nano INTEGER NOT NULL, inexact INTEGER NOT NULL,
    unknown_cost INTEGER NOT NULL, PRIMARY KEY (hour, provider, model)) WITHOUT ROWID"""
_ROLLUP_UPSERT = """INSERT INTO usage_hourly VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
    ON CONFLICT (hour, provider, model) DO UPDATE SET
    count = count + excluded.count, input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
    reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
    cost_nano = cost_nano + excluded.cost_nano, inexact = inexact + excluded.inexact,
    unknown_cost = unknown_cost + excluded.unknown_cost"""
_ROLLUP_REBUILD = f"""INSERT INTO usage_hourly SELECT ts / {_US_PER_HOUR}, provider, model, COUNT(*),
    SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), SUM(cache_write_tokens),
    SUM(reasoning_tokens), COALESCE(SUM(cost_nano), 0),
    SUM(cost IS NOT NULL AND cost_nano IS NULL), SUM(cost IS NULL)
    FROM usage GROUP BY 1, 2, 3"""
_RUNS = """CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, agent_name TEXT, status TEXT,
    started_at TEXT, data TEXT NOT NULL)"""
_SUMS = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
    "SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_nano), "
    "SUM(cost IS NOT NULL AND cost_nano IS NULL), SUM(cost IS NULL)"
)
_ROLLUP_SUMS = (
    "SUM(count), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
    "SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_nano), SUM(inexact), "
    "SUM(unknown_cost)"
)

_dumps = msgspec.json.Encoder(decimal_format="string").encode
_loads = msgspec.json.decode


def _same(us: int) -> int:
    return us  # ts is stored as UTC microseconds already


def _tag_path(key: str) -> str | None:
    # a JSON path can quote any key except one containing a double quote
    return None if '"' in key else f'$."{key}"'


class SQLiteStorage(SqlBudgets, StorageBackend):
    """``SQLiteStorage(db_path)``. One connection behind a lock: safe to write from the
    pipeline's dispatcher thread while other threads query."""

    def __init__(self, db_path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
        if sqlite3.sqlite_version_info < (3, 35):
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old: the sqlite backend needs 3.35+ "
                "(INSERT ... RETURNING)"
            )
        if db_path is None:
            from ..pipeline import default_journal_path

            db_path = default_journal_path("usage.db")
        self.db_path = Path(os.fspath(db_path)).expanduser()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # index maintenance on large tables thrashes the default 2 MB page cache
        self._conn = connect_wal(self.db_path, busy_timeout_ms=int(timeout * 1000),
                                 pragmas=("cache_size=-65536", "temp_store=MEMORY"))
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise
        cols = ", ".join(f"{k} {v.split(' ')[0]}" for k, v in USAGE_COLUMNS.items())
        self._conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS usage_in ({cols})")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, locked, inside ``BEGIN IMMEDIATE``: committed at the end, rolled
        back on any exception."""
        c = self._conn
        with self._lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # -- schema -----------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._transaction() as c:
            cols = ", ".join(f"{k} {v}" for k, v in USAGE_COLUMNS.items())
            c.execute(f"CREATE TABLE IF NOT EXISTS usage ({cols})")
            have = {row[1] for row in c.execute("PRAGMA table_info(usage)")}
            added = [k for k in USAGE_COLUMNS if k not in have]
            required = [k for k in ("id", "ts", "provider", "model") if k in added]
            if required:
                raise ValueError(
                    f"{self.db_path}: table 'usage' has no column(s) {required}; it was not "
                    "written by usageledger and cannot be migrated"
                )
            for k in added:
                decl = USAGE_COLUMNS[k].replace(" PRIMARY KEY", "")
                c.execute(f"ALTER TABLE usage ADD COLUMN {k} {decl}")
            if added:
                log.info("%s: added columns %s to an older usage table", self.db_path, added)
            if "cost_nano" in added:
                self._backfill_cost_nano()
            for ddl in USAGE_INDEXES:
                c.execute(ddl)
            had_rollup = c.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'usage_hourly'"
            ).fetchone()
            c.execute(_ROLLUP)
            if not had_rollup:
                c.execute(_ROLLUP_REBUILD)
            c.execute(_RUNS)
            c.execute(RUNS_INDEX)

    def _backfill_cost_nano(self) -> None:
        rows = self._conn.execute(
            "SELECT rowid, cost FROM usage WHERE cost IS NOT NULL AND cost_nano IS NULL"
        ).fetchall()
        updates = [(cost_nano(Decimal(cost)), rowid) for rowid, cost in rows]
        self._conn.executemany("UPDATE usage SET cost_nano = ? WHERE rowid = ?", updates)

    # -- writes -----------------------------------------------------------------------------
    def save_many(self, records: Iterable[UsageRecord]) -> set[str]:
        batch = unique_records(records)
        if not batch:
            return set()
        rows = []
        for rec in batch.values():
            rows.append((
                rec.id, ts_us(rec.timestamp), rec.provider, rec.model, rec.input_tokens,
                rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens,
                rec.reasoning_tokens, None if rec.cost is None else str(rec.cost),
                cost_nano(rec.cost), rec.currency, rec.user_id, rec.session_id,
                rec.customer_key, rec.run_id, rec.response_id,
                _dumps(rec.tags).decode() if rec.tags else "{}",
                None if rec.payload is None else _dumps(rec.payload).decode(),
            ))
        with self._transaction() as c:
            # staged, then one INSERT ... ON CONFLICT (id) DO NOTHING RETURNING: the primary
            # key alone decides what is new, in the transaction that inserts it
            c.execute("DELETE FROM temp.usage_in")
            c.executemany(_STAGE, rows)
            new = {r[0] for r in c.execute(_INSERT_NEW)}
            rollup: dict[tuple[int, str, str], list[int]] = {}
            for row in rows:
                if row[0] not in new:
                    continue
                key = (row[1] // _US_PER_HOUR, row[2], row[3])
                t = rollup.get(key)
                if t is None:
                    t = rollup[key] = [0] * 9
                t[0] += 1
                t[1] += row[4]
                t[2] += row[5]
                t[3] += row[6]
                t[4] += row[7]
                t[5] += row[8]
                if row[9] is None:
                    t[8] += 1
                elif row[10] is None:
                    t[7] += 1
                else:
                    t[6] += row[10]
            c.executemany(_ROLLUP_UPSERT, [(*k, *v) for k, v in rollup.items()])
        return new

    # -- reads ------------------------------------------------------------------------------
    @staticmethod
    def _where(f: Filters) -> tuple[str, list[Any]]:
        clauses, params = filter_clauses(f, "?", "ts", _same)
        for k, v in f.tags:
            path = _tag_path(k)
            if path is None:
                clauses.append("EXISTS (SELECT 1 FROM json_each(tags) WHERE key = ? AND value = ?)")
                params += [k, v]
            else:
                clauses.append("json_extract(tags, ?) = ?")
                params += [path, v]
        return where_sql(clauses), params

    @staticmethod
    def _record(row: tuple[Any, ...]) -> UsageRecord:
        (id_, us, provider, model, it, ot, cr, cw, rt, cost, currency, user, session, customer,
         run, response, tags, payload) = row
        return UsageRecord(
            id_, from_us(us), provider, model, it, ot, cr, cw, rt,
            None if cost is None else Decimal(cost), currency, user, session, customer, run,
            response, _loads(tags) if tags and tags != "{}" else {},
            None if payload is None else _loads(payload),
        )

    def _query(self, f: Filters, limit: int | None, offset: int) -> list[UsageRecord]:
        where, params = self._where(f)
        sql = f"{_SELECT}{where} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        return [self._record(r) for r in self._fetch(sql, params)]

    def iter_records(self, batch_size: int = 5000, **filters: Any) -> Iterator[UsageRecord]:
        """Newest first in pages that continue after the last (ts, id) seen, so every page
        costs the same however deep it is (OFFSET would rescan the skipped rows)."""
        where, params = self._where(make_filters(**filters))
        for rows in keyset_pages(_SELECT, where, params, "?", batch_size, self._fetch):
            yield from map(self._record, rows)

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _aggregate(self, keys: tuple[str, ...], f: Filters) -> list[Aggregate]:
        with self._lock:
            if rollup_fits(keys, f):
                groups = self._aggregate_rollup(keys, f)
                if groups is not None:
                    return finish_groups(keys, groups)
            return finish_groups(keys, self._aggregate_scan(keys, f))

    @staticmethod
    def _group_sql(key: str, column: str, params: list[Any]) -> str:
        if key == "day":
            return f"{column} / {_US_PER_DAY // _US_PER_HOUR if column == 'hour' else _US_PER_DAY}"
        if key == "hour":
            return "hour" if column == "hour" else f"ts / {_US_PER_HOUR}"
        if key.startswith("tag:"):
            path = _tag_path(key[4:])
            if path is None:
                params.append(key[4:])
                return "(SELECT value FROM json_each(tags) WHERE key = ?)"
            params.append(path)
            return "json_extract(tags, ?)"
        return key

    def _rows_to_groups(self, keys: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict:
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        n = len(keys)
        for row in rows:
            gk = tuple(group_value(k, v) for k, v in zip(keys, row[:n], strict=True))
            count, it, ot, cr, cw, rt, nano, inexact, unknown = row[n:]
            if not count:
                continue
            t = groups.setdefault(gk, zero_totals())
            t["count"] += count
            t["input_tokens"] += it or 0
            t["output_tokens"] += ot or 0
            t["cache_read_tokens"] += cr or 0
            t["cache_write_tokens"] += cw or 0
            t["reasoning_tokens"] += rt or 0
            t["cost"] += nano_to_decimal(nano or 0)
            t["unknown_cost"] += unknown or 0
            t["_inexact"] = t.get("_inexact", 0) + (inexact or 0)
        return groups

    def _aggregate_rollup(self, keys: tuple[str, ...], f: Filters) -> dict | None:
        params: list[Any] = []
        exprs = [self._group_sql(k, "hour", params) for k in keys]
        where, wparams = rollup_where(f, "?")
        params += wparams
        sql = f"SELECT {', '.join([*exprs, _ROLLUP_SUMS])} FROM usage_hourly{where}"
        sql += group_by_sql(len(keys))
        groups = self._rows_to_groups(keys, self._conn.execute(sql, params).fetchall())
        if sum([t.pop("_inexact", 0) for t in groups.values()]):
            return None  # some costs are beyond nano precision: sum them from the records
        return groups

    def _aggregate_scan(self, keys: tuple[str, ...], f: Filters) -> dict:
        params: list[Any] = []
        exprs = [self._group_sql(k, "ts", params) for k in keys]
        where, wparams = self._where(f)
        group = group_by_sql(len(keys))
        sql = f"SELECT {', '.join([*exprs, _SUMS])} FROM usage{where}{group}"
        groups = self._rows_to_groups(keys, self._conn.execute(sql, params + wparams).fetchall())
        if sum([t.pop("_inexact", 0) for t in groups.values()]):
            extra = " AND " if where else " WHERE "
            sql = (f"SELECT {', '.join([*exprs, 'cost'])} FROM usage{where}{extra}"
                   "cost IS NOT NULL AND cost_nano IS NULL")
            n = len(keys)
            for row in self._conn.execute(sql, params + wparams):
                gk = tuple(group_value(k, v) for k, v in zip(keys, row[:n], strict=True))
                groups[gk]["cost"] += Decimal(row[n])
        return groups

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]

    def _budget_sql(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._transaction() as c:
            return c.execute(sql, params).fetchall()

    # -- runs -------------------------------------------------------------------------------
    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        for w in writes:
            run_fields(w)  # validate everything before the transaction
        results: list[str] = []
        with self._transaction() as c:
            for w in writes:
                stored = self._get_run(w.run_id)
                outcome, new = apply_run_write(stored, w)
                results.append(outcome)
                if new is not None:
                    started = new.get("start_time")
                    c.execute(
                        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                        (w.run_id, new["seq"], new.get("agent_name"), new.get("status"),
                         None if started is None else str(started), _dumps(new).decode()),
                    )
        return results

    def _get_run(self, run_id: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT data FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else _loads(row[0])

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._get_run(run_id)

    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        sql, params = runs_query_sql(agent_name, status, "?")
        params += [-1 if limit is None else limit, offset]
        return [_loads(r[0]) for r in self._fetch(sql, params)]

    def clear(self) -> None:
        with self._transaction() as c:
            for table in ("usage", "usage_hourly", "runs"):
                c.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
