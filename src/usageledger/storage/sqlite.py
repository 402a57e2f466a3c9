"""SQLite storage: the embedded default. WAL, exact money, self-migrating schema.

Money: ``cost`` is kept as exact TEXT, and also as integer nano-units (``cost_nano``)
whenever that is exact, so sums run in integer arithmetic inside SQLite; a cost with more
than nine decimals keeps ``cost_nano`` NULL and is summed from its text in Python.
Nothing is rounded.

A damaged file is handled as the journal handles its own: found at open (a quick check of
the whole file, up to :data:`QUICK_CHECK_MAX_BYTES`) or by the operation that meets the
damaged page, it is moved aside (ERROR log naming both paths), every row that still reads
(usage, runs, budgets, prices) goes into a fresh file at the same path, the rollups are
rebuilt from the rows, and the operation runs again there.

An hourly rollup (``usage_hourly``: hour x provider x model x currency) is maintained in the same
transaction as every insert, so ``aggregate`` by day/hour/provider/model with provider,
model and hour-aligned time filters reads a few thousand rows instead of every record.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from ..core._sqlite import (
    BackgroundCheckpoint,
    WalHandle,
    add_missing_columns,
    is_corruption,
    move_aside,
)
from ..core._sqlite_salvage import iter_rows, open_damaged
from ..schema.records import UsageRecord, encode
from ..schema.totals import PART_SUMS
from ._budgets import BUDGET_TABLES, SqlBudgets
from ._keys import KEY_TABLES, PROJECT_TAG, SqlKeys
from ._prices import PRICE_TABLES, SqlPrices
from ._retention import (
    FOLD_COLUMNS,
    RETENTION_TABLES,
    SqlRetention,
    fold_rows,
    project_clause,
    run_day_project,
)
from ._sql import (
    DROPPED_INDEXES,
    MONTH_ROWS_MISSING,
    RUNS_INDEX,
    USAGE_INDEXES,
    daily_sql,
    filter_clauses,
    group_by_sql,
    group_value,
    keyset_pages,
    rollup_where,
    runs_query_sql,
    where_sql,
)
from .aggregate import (
    MONTH,
    ROLLUP_SUMS,
    Aggregate,
    DailyPlan,
    add_totals,
    cost_nano,
    daily_plan,
    finish_groups,
    merge_groups,
    nano_to_decimal,
    rollup_deltas,
    rollup_fits,
    with_none_group,
)
from .base import RunStore, RunWrite, StorageBackend, unique_records
from .filters import _US_PER_DAY, _US_PER_HOUR, Filters, from_us, make_filters, ts_us
from .runs import apply_run_write, run_fields

__all__ = ["SQLiteStorage", "USAGE_COLUMNS", "RUNS_COLUMNS", "TABLES"]

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
    "cache_write_1h_tokens": "INTEGER NOT NULL DEFAULT 0",
    "input_audio_tokens": "INTEGER NOT NULL DEFAULT 0",
    "output_audio_tokens": "INTEGER NOT NULL DEFAULT 0",
    "input_image_tokens": "INTEGER NOT NULL DEFAULT 0",
    "output_image_tokens": "INTEGER NOT NULL DEFAULT 0",
    "service_tier": "TEXT",
}
_COLS = tuple(USAGE_COLUMNS)
#: the primary key decides what is new (only a conflict on id is skipped: any other
#: constraint failure fails the batch); the new ids are read back by rowid (see below).
#: One prepared statement run per row: measured against one INSERT ... SELECT over a JSON
#: array of the rows (json_each, a ->> per column), which cost 1.5x more CPU per record.
_INSERT = (f"INSERT INTO usage ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))}) "
           "ON CONFLICT (id) DO NOTHING")
_NEW_IDS = "SELECT id FROM usage WHERE rowid > ?"
_SELECT = (
    "SELECT id, ts, provider, model, input_tokens, output_tokens, cache_read_tokens, "
    "cache_write_tokens, reasoning_tokens, cost, currency, user_id, session_id, customer_key, "
    "run_id, response_id, tags, payload, cache_write_1h_tokens, input_audio_tokens, "
    "output_audio_tokens, input_image_tokens, output_image_tokens, service_tier FROM usage"
)
#: sums of the finer counts, last in the rollups (a rollup from before them gains them,
#: zero: its records had none)
_PARTS = PART_SUMS
_PART_DECLS = {c: "INTEGER NOT NULL DEFAULT 0" for c in _PARTS}
_TOTALS = """count INTEGER NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, cost_nano INTEGER NOT NULL, inexact INTEGER NOT NULL,
    unknown_cost INTEGER NOT NULL, """ + ", ".join(f"{c} {d}" for c, d in _PART_DECLS.items())
_PART_SUM = "".join(f", SUM({c})" for c in _PARTS)
_ROLLUP = f"""CREATE TABLE IF NOT EXISTS usage_hourly (
    hour INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, currency TEXT NOT NULL,
    {_TOTALS}, PRIMARY KEY (hour, provider, model, currency)) WITHOUT ROWID"""
#: totals per whole UTC day and currency for each user, customer, session and tag value
#: (dim 'user_id', 'customer_key', 'session_id', 'tag:<key>'), and of all records (dim '')
_DAILY = f"""CREATE TABLE IF NOT EXISTS usage_daily (
    dim TEXT NOT NULL, value TEXT NOT NULL, day INTEGER NOT NULL, currency TEXT NOT NULL,
    {_TOTALS}, PRIMARY KEY (dim, value, day, currency)) WITHOUT ROWID"""
#: sums of new rows, in the rollups' column order
_NEW_SUMS = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
    "SUM(cache_write_tokens), SUM(reasoning_tokens), COALESCE(SUM(cost_nano), 0), "
    "SUM(cost IS NOT NULL AND cost_nano IS NULL), SUM(cost IS NULL)" + _PART_SUM
)
_ADD = ", ".join(
    f"{c} = {c} + excluded.{c}"
    for c in ("count", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "reasoning_tokens", "cost_nano", "inexact", "unknown_cost", *_PARTS)
)
# Rollups are maintained from the rows just inserted, in the insert's transaction: a table
# with a rowid gives a new row a rowid above every existing one, so the new rows are those
# above the largest rowid read before the insert (the write lock is held throughout).
_ROLLUP_NEW = f"""INSERT INTO usage_hourly SELECT ts / {_US_PER_HOUR}, provider, model, currency,
    {_NEW_SUMS} FROM usage WHERE rowid > ?1 GROUP BY 1, 2, 3, 4 ON CONFLICT DO UPDATE SET {_ADD}"""
_DAY_COLS = (f"u.ts / {_US_PER_DAY} AS day, u.currency, u.input_tokens, u.output_tokens, "
             "u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens, u.cost, u.cost_nano"
             + "".join(f", u.{c}" for c in _PARTS))
# the first day of the month holding day number ``day`` (see aggregate.MONTH)
_MONTH_OF_DAY = "{day} + 1 - CAST(strftime('%d', {day} * 86400, 'unixepoch') AS INTEGER)"
_R_COLS = ("currency, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
           "reasoning_tokens, cost, cost_nano" + "".join(f", {c}" for c in _PARTS))
_DAILY_NEW = f"""WITH r AS (
    SELECT '' AS dim, '' AS value, {_DAY_COLS} FROM usage AS u WHERE u.rowid > ?1
    UNION ALL SELECT 'user_id', u.user_id, {_DAY_COLS} FROM usage AS u
        WHERE u.rowid > ?1 AND u.user_id IS NOT NULL
    UNION ALL SELECT 'customer_key', u.customer_key, {_DAY_COLS} FROM usage AS u
        WHERE u.rowid > ?1 AND u.customer_key IS NOT NULL
    UNION ALL SELECT 'session_id', u.session_id, {_DAY_COLS} FROM usage AS u
        WHERE u.rowid > ?1 AND u.session_id IS NOT NULL
    UNION ALL SELECT 'tag:' || t.key, t.value, {_DAY_COLS} FROM usage AS u, json_each(u.tags) AS t
        WHERE u.rowid > ?1 AND u.tags <> '{{}}'
) INSERT INTO usage_daily SELECT dim, value, day, currency, {_NEW_SUMS} FROM (
    SELECT dim, value, day, {_R_COLS} FROM r
    UNION ALL SELECT '{MONTH}' || dim, value, {_MONTH_OF_DAY.format(day="day")}, {_R_COLS} FROM r
) WHERE true GROUP BY 1, 2, 3, 4 ON CONFLICT DO UPDATE SET {_ADD}"""
#: the month rows of a file from before them, from its day rows
_MONTHS_FROM_DAYS = f"""INSERT INTO usage_daily SELECT '{MONTH}' || dim, value,
    {_MONTH_OF_DAY.format(day="day")}, currency, {", ".join(f"SUM({c})" for c in ROLLUP_SUMS)} FROM usage_daily
    WHERE substr(dim, 1, 1) <> '{MONTH}' GROUP BY 1, 2, 3, 4 ON CONFLICT DO UPDATE SET {_ADD}"""
# A batch's new rows are added up in Python (rollup_deltas) and written one upsert per
# rollup row: the statements above build the rollups of rows already stored (a file from
# before a rollup, a salvage, a reprice), and a test checks both give the same rows.
_SUM_COLS = ", ".join(ROLLUP_SUMS)
_SUM_PARAMS = ", ".join("?" * len(ROLLUP_SUMS))
_HOURLY_ADD = (f"INSERT INTO usage_hourly (hour, provider, model, currency, {_SUM_COLS}) "
               f"VALUES (?, ?, ?, ?, {_SUM_PARAMS}) ON CONFLICT DO UPDATE SET {_ADD}")
_DAILY_ADD = (f"INSERT INTO usage_daily (dim, value, day, currency, {_SUM_COLS}) "
              f"VALUES (?, ?, ?, ?, {_SUM_PARAMS}) ON CONFLICT DO UPDATE SET {_ADD}")
# Reprice changes a row's cost in place: its old sums leave the rollups (the same statements
# over the changed ids, negated), then its new ones enter, in one transaction.
_IDS = "(SELECT id FROM temp.reprice_ids)"
_NEG_SUMS = (
    "-COUNT(*), -SUM(input_tokens), -SUM(output_tokens), -SUM(cache_read_tokens), "
    "-SUM(cache_write_tokens), -SUM(reasoning_tokens), -COALESCE(SUM(cost_nano), 0), "
    "-SUM(cost IS NOT NULL AND cost_nano IS NULL), -SUM(cost IS NULL)" + _PART_SUM.replace(", SUM", ", -SUM")
)
_REPRICE = [
    sql.replace("u.rowid > ?1", f"u.id IN {_IDS}").replace("rowid > ?1", f"id IN {_IDS}")
    for sql in (_ROLLUP_NEW.replace(_NEW_SUMS, _NEG_SUMS), _DAILY_NEW.replace(_NEW_SUMS, _NEG_SUMS),
                "UPDATE usage SET cost = ?2, cost_nano = ?3, currency = ?4 WHERE id = ?1",
                _ROLLUP_NEW, _DAILY_NEW,
                "DELETE FROM usage_hourly WHERE count = 0", "DELETE FROM usage_daily WHERE count = 0")
]
#: every rowid is above this: the rollups of a whole table (opening a file without them)
_ALL_ROWS = -(2**63)
RUNS_COLUMNS: dict[str, str] = {
    "run_id": "TEXT PRIMARY KEY",
    "seq": "INTEGER NOT NULL",
    "agent_name": "TEXT",
    "status": "TEXT",
    "started_at": "TEXT",
    "data": "TEXT NOT NULL",
}
#: table -> its columns: opening a file creates a missing table and adds missing columns
#: (a new column is one entry here; the rollups are rebuilt rather than migrated)
TABLES: dict[str, dict[str, str]] = {"usage": USAGE_COLUMNS, "runs": RUNS_COLUMNS}
#: columns a ``usage`` table must have for usageledger to have written it
_REQUIRED = ("id", "ts", "provider", "model")
_SUMS = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
    "SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_nano), "
    "SUM(cost IS NOT NULL AND cost_nano IS NULL), SUM(cost IS NULL)" + _PART_SUM
)
_ROLLUP_SUMS = (
    "SUM(count), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
    "SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_nano), SUM(inexact), "
    "SUM(unknown_cost)" + _PART_SUM
)

#: a file up to this size gets a full ``PRAGMA quick_check`` at open; a larger one only
#: has its schema read then, and damage elsewhere is found by the operation meeting it
#: (quick_check read a 400 MB file of 10^6 records in 5.2-6.2 s on a busy 2-core box: too
#: long for every ``usageledger report``)
QUICK_CHECK_MAX_BYTES = 16 * 1024 * 1024
#: the tables whose rows are salvaged from a damaged file (the rollups are rebuilt)
_SALVAGED = ("usage", "runs", "budgets", "budget_alerts", "prices", "price_aliases", "api_keys",
             "usage_retained", "runs_retained", "retention_marks")
#: rows per transaction when salvaging
_SALVAGE_BATCH = 5000

_loads = msgspec.json.decode


_PROJECT_PATH = f'$."{PROJECT_TAG}"'


def _same(us: int) -> int:
    return us  # ts is stored as UTC microseconds already


def _tag_path(key: str) -> str | None:
    # a quoted JSON path label cannot hold a double quote, and SQLite reads a backslash in
    # it as an escape: such keys are matched through json_each instead
    return None if '"' in key or "\\" in key else f'$."{key}"'


def _salvaging(method: Any) -> Any:
    """An operation that finds the file damaged: the file is moved aside and salvaged
    into a fresh one, and the operation runs once more, there."""
    @functools.wraps(method)
    def run(self: SQLiteStorage, *args: Any, **kw: Any) -> Any:
        gen = self._db.gen
        try:
            return method(self, *args, **kw)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            self._replace_corrupt(str(exc), gen)
        return method(self, *args, **kw)
    return run


def usage_row(rec: UsageRecord) -> tuple[Any, ...]:
    """The parameters of the usage table's INSERT for one record."""
    return (rec.id, ts_us(rec.timestamp), rec.provider, rec.model, rec.input_tokens,
            rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens,
            rec.reasoning_tokens, None if rec.cost is None else str(rec.cost),
            cost_nano(rec.cost), rec.currency, rec.user_id, rec.session_id,
            rec.customer_key, rec.run_id, rec.response_id,
            encode(rec.tags).decode() if rec.tags else "{}",
            None if rec.payload is None else encode(rec.payload).decode(),
            rec.cache_write_1h_tokens, rec.input_audio_tokens, rec.output_audio_tokens,
            rec.input_image_tokens, rec.output_image_tokens, rec.service_tier)


class SQLiteStorage(SqlBudgets, SqlPrices, SqlKeys, SqlRetention, RunStore, StorageBackend):
    """``SQLiteStorage(db_path)``. One connection behind a lock: safe to write from the
    pipeline's dispatcher thread while other threads query."""

    def __init__(self, db_path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
        if sqlite3.sqlite_version_info < (3, 35):
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old: the sqlite backend needs 3.35+ "
                "(INSERT ... RETURNING)"
            )
        if db_path is None:
            from ..core.pipeline import default_journal_path

            db_path = default_journal_path("usage.db")
        self.db_path = Path(os.fspath(db_path)).expanduser()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._explain: list[str] | None = None
        # one connection behind a lock, in the fork gate, reopened in a forked child;
        # index maintenance on large tables thrashes the default 2 MB page cache
        self._db = WalHandle(self.db_path, busy_timeout_ms=int(timeout * 1000),
                             pragmas=("cache_size=-65536", "temp_store=MEMORY",
                                      f"wal_autocheckpoint={BackgroundCheckpoint.WRITER_LIMIT}"))
        self._checkpointer = BackgroundCheckpoint(self._db)
        #: what was salvaged when a damaged file was replaced (None: never)
        self.salvaged: dict[str, Any] | None = None
        try:
            self._open_checked()
        except BaseException:
            self._db.close()
            raise

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection (callers hold ``self._db``)."""
        return self._db.get()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The connection, locked, inside ``BEGIN IMMEDIATE``: committed at the end, rolled
        back on any exception."""
        return self._db.transaction()

    # -- damaged files ----------------------------------------------------------------------
    def _open_checked(self) -> None:
        gen = self._db.gen
        small = not self.db_path.exists() or self.db_path.stat().st_size <= QUICK_CHECK_MAX_BYTES
        try:
            with self._db as c:
                check = "PRAGMA quick_check(5)" if small else "SELECT 'ok' FROM sqlite_master LIMIT 1"
                problems = [r[0] for r in c.execute(check)]
            if problems in (["ok"], []):  # [] an empty file
                self._migrate()
                return
            reason = "; ".join(map(str, problems))
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            reason = str(exc)
        self._replace_corrupt(reason, gen)

    def _replace_corrupt(self, reason: str, seen_gen: int) -> None:
        """Move the damaged file aside, start a fresh one at the same path and put every
        row that still reads into it. ``seen_gen``: the file the error came from (another
        thread may have replaced it already)."""
        with self._db.held():
            if seen_gen != self._db.gen:
                return
            self._db.reset()  # closed before the file moves (see WalHandle.reset)
            aside = move_aside(self.db_path)
            log.error("storage %s is damaged (%s); moved it aside to %s and started a new file at %s",
                      self.db_path, reason, aside, self.db_path)
            self._migrate()
            with self._transaction() as c:  # budgets, prices, keys, rollups: tables at once
                for ddl in (*BUDGET_TABLES, *PRICE_TABLES, *KEY_TABLES, *RETENTION_TABLES):
                    c.execute(ddl)
            self.salvaged = self._salvage_from(aside) | {"reason": reason}

    def _salvage_from(self, aside: Path) -> dict[str, Any]:
        report: dict[str, Any] = {"from": str(aside), "rows": {}, "header_rebuilt": False,
                                  "problems": []}
        try:
            with open_damaged(aside, "usage") as damaged:
                report["header_rebuilt"], report["problems"] = damaged.header_rebuilt, damaged.problems
                tables = damaged.tables() if damaged.conn is not None else set()
                for table in _SALVAGED:
                    if table in tables:
                        report["rows"][table] = self._copy_rows(damaged.conn, table, damaged.problems)
                with self._transaction() as c:  # the rollups of what was salvaged
                    self._backfill_cost_nano()  # rows from a file older than cost_nano
                    c.execute(_ROLLUP_NEW, (_ALL_ROWS,))
                    c.execute(_DAILY_NEW, (_ALL_ROWS,))
        except Exception as exc:  # salvage is best effort; the new file works anyway
            report["problems"].append(f"{type(exc).__name__}: {exc}")
        log.error("salvaged %s from %s into %s; %s",
                  ", ".join(f"{n} {t} rows" for t, n in report["rows"].items()) or "nothing",
                  aside, self.db_path, "; ".join(report["problems"]) or "nothing else was damaged")
        return report

    def _copy_rows(self, src: sqlite3.Connection, table: str, problems: list[str]) -> int:
        """Every readable row of ``table`` in ``src`` into this file (the columns both have)."""
        try:
            have = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
        except (sqlite3.Error, ValueError) as exc:
            problems.append(f"{table}: columns unreadable ({exc})")
            return 0
        with self._db as c:
            ours = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
        cols = [col for col in have if col in ours]
        insert = (f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) "
                  f"VALUES ({', '.join('?' * len(cols))})")
        n, pending = 0, []
        for rows in iter_rows(src, table, ", ".join(cols), problems):
            pending += [r[1:] for r in rows]
            if len(pending) >= _SALVAGE_BATCH:
                n += self._insert_rows(insert, pending)
                pending = []
        return n + self._insert_rows(insert, pending)

    def _insert_rows(self, insert: str, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        with self._transaction() as c:
            before = c.total_changes
            c.executemany(insert, rows)
            return c.total_changes - before

    # -- schema -----------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._transaction() as c:
            added: dict[str, list[str]] = {}
            for table, columns in TABLES.items():
                try:
                    added[table] = add_missing_columns(
                        c, table, columns, required=_REQUIRED if table == "usage" else ())
                except ValueError as exc:
                    raise ValueError(f"{self.db_path}: {exc}") from None
                if added[table]:
                    log.info("%s: added columns %s to an older %s table", self.db_path,
                             added[table], table)
            if "cost_nano" in added["usage"]:
                self._backfill_cost_nano()
            for ddl in (*USAGE_INDEXES, *DROPPED_INDEXES):
                c.execute(ddl)
            have_tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
            if "usage_hourly" in have_tables and "currency" not in {
                    r[1] for r in c.execute("PRAGMA table_info(usage_hourly)")}:
                # a rollup keyed without currency added money across currencies: rebuild it
                c.execute("DROP TABLE usage_hourly")
                have_tables.discard("usage_hourly")
            for table, ddl, fill in (("usage_hourly", _ROLLUP, _ROLLUP_NEW),
                                     ("usage_daily", _DAILY, _DAILY_NEW)):
                c.execute(ddl)
                if table not in have_tables:  # a file from before this rollup: build it
                    c.execute(fill, (_ALL_ROWS,))
                    continue
                # a rollup from before the finer token kinds: they start at 0 there
                add_missing_columns(c, table, _PART_DECLS)
            if c.execute(MONTH_ROWS_MISSING).fetchone()[0]:
                c.execute(_MONTHS_FROM_DAYS)  # daily totals from before the month rows
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
        new = self._insert(list(batch.values()), [usage_row(rec) for rec in batch.values()])
        self._checkpointer.wrote(len(new))
        return new

    @_salvaging
    def _insert(self, records: list[UsageRecord], rows: list[tuple[Any, ...]]) -> set[str]:
        with self._transaction() as c:
            top = c.execute("SELECT COALESCE(MAX(rowid), 0) FROM usage").fetchone()[0]
            c.executemany(_INSERT, rows)
            new = {r[0] for r in c.execute(_NEW_IDS, (top,))}
            if new:
                hourly, daily = rollup_deltas((rec, row[1], row[10]) for rec, row in zip(records, rows, strict=True)
                                              if rec.id in new)
                c.executemany(_HOURLY_ADD, [(*k, *v) for k, v in sorted(hourly.items())])
                c.executemany(_DAILY_ADD, [(*k, *v) for k, v in sorted(daily.items())])
        return new

    def replace_costs(self, records: Sequence[UsageRecord]) -> int:
        """Store the cost and currency of ``records`` on the stored rows of the same id, the
        rollups following exactly, in one transaction; returns how many rows changed."""
        batch = unique_records(records)
        if not batch:
            return 0
        return self._reprice(batch)

    @_salvaging
    def _reprice(self, batch: dict[str, UsageRecord]) -> int:
        sub_hourly, sub_daily, update, add_hourly, add_daily, *prune = _REPRICE
        with self._transaction() as c:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS reprice_ids (id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM temp.reprice_ids")
            c.executemany("INSERT INTO temp.reprice_ids SELECT id FROM usage WHERE id = ?",
                          [(i,) for i in batch])
            n = c.execute("SELECT COUNT(*) FROM temp.reprice_ids").fetchone()[0]
            c.execute(sub_hourly)
            c.execute(sub_daily)
            c.executemany(update, [(r.id, None if r.cost is None else str(r.cost), cost_nano(r.cost),
                                    r.currency) for r in batch.values()])
            c.execute(add_hourly)
            c.execute(add_daily)
            for sql in prune:
                c.execute(sql)
        return n

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
         run, response, tags, payload, *details) = row
        return UsageRecord(
            id_, from_us(us), provider, model, it, ot, cr, cw, rt,
            None if cost is None else Decimal(cost), currency, user, session, customer, run,
            response, _loads(tags) if tags and tags != "{}" else {},
            None if payload is None else _loads(payload), *details,
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

    @_salvaging
    def _fetch(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._db:
            return self._conn.execute(sql, params).fetchall()

    @_salvaging
    def _aggregate(self, keys: tuple[str, ...], f: Filters) -> list[Aggregate]:
        with self._db:
            groups = None
            if rollup_fits(keys, f):
                groups = self._aggregate_rollup(keys, f)
            else:
                plan = daily_plan(keys, f, months=True)
                if plan is not None:
                    groups = self._aggregate_daily(keys, plan)
            if groups is None:
                groups = self._aggregate_scan(keys, f)
            return finish_groups(keys, groups)

    def explain_aggregate(self, group_by: Sequence[str] | str = ("day",), **filters: Any) -> list[str]:
        """The query plans (``EXPLAIN QUERY PLAN`` lines) of the statements ``aggregate``
        runs for these arguments, e.g. to check that totals come from a rollup."""
        with self._db:
            self._explain = []
            try:
                self.aggregate(group_by, **filters)
                return self._explain
            finally:
                self._explain = None

    def _select(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        if self._explain is not None:
            self._explain += [r[-1] for r in self._conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        return self._conn.execute(sql, params).fetchall()

    def _aggregate_daily(self, keys: tuple[str, ...], plan: DailyPlan) -> dict | None:
        """Totals from ``usage_daily`` plus the partial days at the edges of the range."""
        sql, params = daily_sql(keys, plan, "?", _ROLLUP_SUMS)
        groups = self._rows_to_groups(keys, self._select(sql, params))
        if plan.grouped:
            sql, params = daily_sql(keys, plan, "?", _ROLLUP_SUMS, total=True)
            rest = tuple(k for k in keys if k != plan.dim)
            totals = self._rows_to_groups(rest, self._select(sql, params))
            inexact = sum(t.get("_inexact", 0) for t in totals.values())
            groups = with_none_group(keys, plan.dim, groups, totals)
        else:
            inexact = sum(t.get("_inexact", 0) for t in groups.values())
        if inexact:
            return None  # some costs are beyond nano precision: sum them from the records
        for t in groups.values():
            t.pop("_inexact", None)
        for edge in plan.edges:
            merge_groups(groups, self._aggregate_scan(keys, edge))
        return groups

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
        named = any(k in ("day", "hour") for k in keys)
        for row in rows:
            count, it, ot, cr, cw, rt, nano, inexact, unknown, *parts = row[n:]
            if not count:
                continue
            gk = tuple(group_value(k, v) for k, v in zip(keys, row[:n], strict=True)) if named else row[:n]
            # built whole (zero_totals' key order), then added only when the key repeats:
            # a per-user aggregate at 10^6 records turns 30,000 daily rows into totals
            t = {"count": count, "input_tokens": it or 0, "output_tokens": ot or 0,
                 "cache_read_tokens": cr or 0, "cache_write_tokens": cw or 0,
                 "reasoning_tokens": rt or 0, "cost": nano_to_decimal(nano or 0),
                 "unknown_cost": unknown or 0}
            for k, v in zip(_PARTS, parts, strict=True):
                t[k] = v or 0
            t["_inexact"] = inexact or 0
            have = groups.get(gk)
            if have is None:
                groups[gk] = t
            else:
                add_totals(have, t)
        return groups

    def _aggregate_rollup(self, keys: tuple[str, ...], f: Filters) -> dict | None:
        params: list[Any] = []
        exprs = [self._group_sql(k, "hour", params) for k in keys]
        where, wparams = rollup_where(f, "?")
        params += wparams
        sql = f"SELECT {', '.join([*exprs, _ROLLUP_SUMS])} FROM usage_hourly{where}"
        sql += group_by_sql(len(keys))
        groups = self._rows_to_groups(keys, self._select(sql, params))
        if sum([t.pop("_inexact", 0) for t in groups.values()]):
            return None  # some costs are beyond nano precision: sum them from the records
        return groups

    def _aggregate_scan(self, keys: tuple[str, ...], f: Filters) -> dict:
        params: list[Any] = []
        exprs = [self._group_sql(k, "ts", params) for k in keys]
        where, wparams = self._where(f)
        group = group_by_sql(len(keys))
        sql = f"SELECT {', '.join([*exprs, _SUMS])} FROM usage{where}{group}"
        groups = self._rows_to_groups(keys, self._select(sql, params + wparams))
        if sum([t.pop("_inexact", 0) for t in groups.values()]):
            extra = " AND " if where else " WHERE "
            sql = (f"SELECT {', '.join([*exprs, 'cost'])} FROM usage{where}{extra}"
                   "cost IS NOT NULL AND cost_nano IS NULL")
            n = len(keys)
            for row in self._conn.execute(sql, params + wparams):
                gk = tuple(group_value(k, v) for k, v in zip(keys, row[:n], strict=True))
                groups[gk]["cost"] += Decimal(row[n])
        return groups

    @_salvaging
    def count(self) -> int:
        with self._db:
            return self._conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]

    @_salvaging
    def _side_sql(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._transaction() as c:
            return c.execute(sql, params).fetchall()

    # -- runs -------------------------------------------------------------------------------
    @_salvaging
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
                         None if started is None else str(started), encode(new).decode()),
                    )
        return results

    def _get_run(self, run_id: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT data FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else _loads(row[0])

    @_salvaging
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._db:
            return self._get_run(run_id)

    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        sql, params = runs_query_sql(agent_name, status, "?")
        params += [-1 if limit is None else limit, offset]
        return [_loads(r[0]) for r in self._fetch(sql, params)]

    def _query_project_runs(
        self, project: str, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        sql, params = runs_query_sql(agent_name, status, "?", "json_extract(data, '$.project')", project)
        params += [-1 if limit is None else limit, offset]
        return [_loads(r[0]) for r in self._fetch(sql, params)]

    # -- retention (storage/_retention.py) ------------------------------------------------------
    def _fold_batch(self, cutoff_us: int, project: str | None, excluded: list[str], batch: int) -> int:
        """One batch folded, taken out of the hourly/daily totals and deleted, in one
        transaction (the statements of replace_costs subtract the rows' sums)."""
        clause, params = project_clause(project, excluded, f"json_extract(tags, '{_PROJECT_PATH}')", "?")
        sub_hourly, sub_daily, *_, prune_hourly, prune_daily = _REPRICE
        with self._transaction() as c:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS reprice_ids (id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM temp.reprice_ids")
            c.execute(f"INSERT INTO temp.reprice_ids SELECT id FROM usage WHERE ts < ?{clause} "
                      "ORDER BY ts LIMIT ?", [cutoff_us, *params, batch])
            rows = c.execute(
                f"SELECT ts, tags, {', '.join(FOLD_COLUMNS)} "
                "FROM usage WHERE id IN (SELECT id FROM temp.reprice_ids)").fetchall()
            if not rows:
                return 0
            folded = fold_rows((r[0], _loads(r[1]) if r[1] and r[1] != "{}" else None, *r[2:]) for r in rows)
            for sql in (sub_hourly, sub_daily, prune_hourly, prune_daily,
                        "DELETE FROM usage WHERE id IN (SELECT id FROM temp.reprice_ids)"):
                c.execute(sql)
            self._fold_into(lambda sql, p: c.execute(sql, p).fetchall(), c.executemany, folded)
        return len(rows)

    def _fold_runs_batch(self, cutoff_us: int, project: str | None, excluded: list[str], batch: int) -> int:
        with self._transaction() as c:
            gone, counts = [], {}
            for run_id, data in c.execute("SELECT run_id, data FROM runs ORDER BY run_id"):
                run = _loads(data)
                us, rest = run_day_project(run)
                if us is None or us >= cutoff_us or (project is not None and rest[0] != project) or (
                        project is None and rest[0] in excluded):
                    continue
                gone.append((run_id,))
                key = (us // _US_PER_DAY, *rest)
                counts[key] = counts.get(key, 0) + 1
                if len(gone) >= batch:
                    break
            c.executemany("DELETE FROM runs WHERE run_id = ?", gone)
            self._fold_runs_into(lambda sql, p: c.execute(sql, p).fetchall(), counts)
        return len(gone)

    @_salvaging
    def clear(self) -> None:
        with self._transaction() as c:
            for table in ("usage", "usage_hourly", "usage_daily", "runs"):
                c.execute(f"DELETE FROM {table}")
            have = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in ("usage_retained", "runs_retained", "retention_marks"):
                if table in have:
                    c.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        self._checkpointer.stop()
        with self._db.held():  # not under an operation of another thread
            self._db.close(final=True)
