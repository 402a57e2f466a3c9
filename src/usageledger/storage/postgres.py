"""PostgreSQL storage (psycopg 3 + psycopg_pool): for several collectors on one database.

Records go in with binary ``COPY`` into a per-connection temp table, then one statement
``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING RETURNING`` that also adds the newly
stored rows to an hourly rollup (``usage_hourly``) — dedup, insert and rollup are one
transaction, and the primary key is the only arbiter between concurrent collectors.
Rows are inserted in id order, so two collectors writing overlapping batches take their
row locks in the same order and cannot deadlock on each other. Cost is NUMERIC (exact).
The schema is created or migrated forward at open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec

from ..schema.records import (
    CREATED,
    DUPLICATE,
    MISSING,
    STALE,
    UPDATED,
    UsageRecord,
    encode,
    to_utc,
)
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
    Aggregate,
    DailyPlan,
    daily_plan,
    finish_groups,
    merge_groups,
    rollup_fits,
    with_none_group,
    zero_totals,
)
from .base import RunStore, RunWrite, StorageBackend, unique_records
from .filters import Filters, from_us, make_filters, ts_us
from .runs import run_fields

__all__ = ["PostgresStorage"]

log = logging.getLogger("usageledger.storage.postgres")
_astuple = msgspec.structs.astuple

_COLUMNS: dict[str, str] = {
    # C collation: ids and tie-breaks order as Python compares strings
    "id": 'TEXT COLLATE "C" PRIMARY KEY',
    "ts": "TIMESTAMPTZ NOT NULL",
    "provider": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "input_tokens": "BIGINT NOT NULL DEFAULT 0",
    "output_tokens": "BIGINT NOT NULL DEFAULT 0",
    "cache_read_tokens": "BIGINT NOT NULL DEFAULT 0",
    "cache_write_tokens": "BIGINT NOT NULL DEFAULT 0",
    "reasoning_tokens": "BIGINT NOT NULL DEFAULT 0",
    "cost": "NUMERIC",
    "currency": "TEXT NOT NULL DEFAULT 'USD'",
    "user_id": "TEXT",
    "session_id": "TEXT",
    "customer_key": "TEXT",
    "run_id": "TEXT",
    "response_id": "TEXT",
    "tags": "JSONB NOT NULL DEFAULT '{}'",
    "payload": "JSONB",
    "cache_write_1h_tokens": "BIGINT NOT NULL DEFAULT 0",
    "input_audio_tokens": "BIGINT NOT NULL DEFAULT 0",
    "output_audio_tokens": "BIGINT NOT NULL DEFAULT 0",
    "input_image_tokens": "BIGINT NOT NULL DEFAULT 0",
    "output_image_tokens": "BIGINT NOT NULL DEFAULT 0",
    "service_tier": "TEXT",
}
_COLS = tuple(_COLUMNS)
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "reasoning_tokens")
#: sums of the finer counts, last in the rollups (a rollup from before them gains them,
#: zero: its records had none)
_PARTS = PART_SUMS
_PART_COLS = "".join(f", {c} NUMERIC NOT NULL DEFAULT 0" for c in _PARTS)
_HOUR = "floor(extract(epoch FROM ts) / 3600)::bigint"
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS usage ({})".format(", ".join(f"{k} {v}" for k, v in _COLUMNS.items())),
    """CREATE TABLE IF NOT EXISTS usage_hourly (
        hour BIGINT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, currency TEXT NOT NULL,
        count BIGINT NOT NULL, input_tokens NUMERIC NOT NULL, output_tokens NUMERIC NOT NULL,
        cache_read_tokens NUMERIC NOT NULL, cache_write_tokens NUMERIC NOT NULL,
        reasoning_tokens NUMERIC NOT NULL, cost NUMERIC NOT NULL, unknown_cost BIGINT NOT NULL{_PART_COLS},
        PRIMARY KEY (hour, provider, model, currency))""".replace("{_PART_COLS}", _PART_COLS),
    """CREATE TABLE IF NOT EXISTS usage_daily (
        dim TEXT COLLATE "C" NOT NULL, value TEXT COLLATE "C" NOT NULL, day BIGINT NOT NULL,
        currency TEXT COLLATE "C" NOT NULL,
        count BIGINT NOT NULL, input_tokens NUMERIC NOT NULL, output_tokens NUMERIC NOT NULL,
        cache_read_tokens NUMERIC NOT NULL, cache_write_tokens NUMERIC NOT NULL,
        reasoning_tokens NUMERIC NOT NULL, cost NUMERIC NOT NULL, unknown_cost BIGINT NOT NULL{_PART_COLS},
        PRIMARY KEY (dim, value, day, currency))""".replace("{_PART_COLS}", _PART_COLS),
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT COLLATE "C" PRIMARY KEY, seq BIGINT NOT NULL, agent_name TEXT,
        status TEXT, started_at TEXT COLLATE "C", data JSONB NOT NULL)""",
]
_INDEXES = [*USAGE_INDEXES, *DROPPED_INDEXES, RUNS_INDEX]
_TEMP = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_in (id TEXT, ts TIMESTAMPTZ, provider TEXT, model TEXT, "
    "input_tokens BIGINT, output_tokens BIGINT, cache_read_tokens BIGINT, cache_write_tokens BIGINT, "
    "reasoning_tokens BIGINT, cost NUMERIC, currency TEXT, user_id TEXT, session_id TEXT, "
    "customer_key TEXT, run_id TEXT, response_id TEXT, tags TEXT, payload TEXT, "
    "cache_write_1h_tokens BIGINT, input_audio_tokens BIGINT, output_audio_tokens BIGINT, "
    "input_image_tokens BIGINT, output_image_tokens BIGINT, service_tier TEXT) "
    "ON COMMIT DELETE ROWS"
)
_SUMS = ", ".join(
    ["count(*)", *(f"sum({t})" for t in _TOKENS), "coalesce(sum(cost), 0)",
     "count(*) FILTER (WHERE cost IS NULL)", *(f"sum({t})" for t in _PARTS)]
)
_ROLLUP_SUMS = ", ".join(
    ["sum(count)", *(f"sum({t})" for t in _TOKENS), "sum(cost)", "sum(unknown_cost)",
     *(f"sum({t})" for t in _PARTS)]
)
_DAY = "floor(extract(epoch FROM {src}.ts) / 86400)::bigint"
_ADD = ", ".join(f"{c} = {{table}}.{c} + excluded.{c}"
                 for c in ("count", *_TOKENS, "cost", "unknown_cost", *_PARTS))
_DAY_COLS = ", ".join([_DAY, "{src}.currency", *(f"{{src}}.{t}" for t in _TOKENS), "{src}.cost",
                       *(f"{{src}}.{t}" for t in _PARTS)])
#: the first day of the month holding day number ``{day}`` (see aggregate.MONTH)
_MONTH_OF_DAY = "(date_trunc('month', DATE '1970-01-01' + {day}::int)::date - DATE '1970-01-01')::bigint"
_SUM_NAMES = ", ".join(["count", *_TOKENS, "cost", "unknown_cost", *_PARTS])
#: the month rows of the day rows in ``{days}`` (a table or a CTE of usage_daily's columns)
_MONTHS_OF = (f"SELECT '{MONTH}' || dim, value, {_MONTH_OF_DAY.format(day='day')}, currency, "
              f"{_ROLLUP_SUMS} FROM {{days}} GROUP BY 1, 2, 3, 4")
# The month rows are the sums of the day rows just added up (a few hundred a batch), not a
# second pass over the records: 46.0 against 59.2 µs per record at batch 1,000 (42 against
# 55 µs of server CPU; lower in each of 12 alternating rounds), 119.8 against 132.5 at
# batch 100, 100,000 records stored.
#: the daily totals per user, customer, session and tag value (dim '' holds all records) of
#: the rows of ``{src}``, and their month rows (each row counted once more under
#: '@' || dim and its month's first day), sorted: concurrent writers lock rollup rows in
#: the same order
_DAILY_ROWS = f"""
    WITH d (dim, value, day, currency, {_SUM_NAMES}) AS (
        SELECT dim, value, day, currency, {_SUMS} FROM (
            SELECT '', '', {_DAY_COLS} FROM {{src}}
            UNION ALL SELECT 'user_id', {{src}}.user_id, {_DAY_COLS} FROM {{src}}
                WHERE {{src}}.user_id IS NOT NULL
            UNION ALL SELECT 'customer_key', {{src}}.customer_key, {_DAY_COLS} FROM {{src}}
                WHERE {{src}}.customer_key IS NOT NULL
            UNION ALL SELECT 'session_id', {{src}}.session_id, {_DAY_COLS} FROM {{src}}
                WHERE {{src}}.session_id IS NOT NULL
            UNION ALL SELECT 'tag:' || t.key, t.value, {_DAY_COLS} FROM {{src}}, jsonb_each_text({{src}}.tags) AS t
        ) AS n (dim, value, day, currency, {", ".join(_TOKENS)}, cost, {", ".join(_PARTS)})
        GROUP BY 1, 2, 3, 4)
    SELECT * FROM d UNION ALL {_MONTHS_OF.format(days="d")}
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (dim, value, day, currency) DO UPDATE SET {_ADD.format(table="usage_daily")}"""
# The rollups are added up in SQL over the rows the insert returns, in the same statement.
# Measured against adding them up in Python (rollup_deltas, as SQLite does) and upserting
# them from two staging tables (16 alternating rounds each, 100,000 records stored): at
# batch 1,000 the same wall time (36.5-37.6 against 34.7-39.7 µs per record) and the same
# client + server CPU, Python moving 9 µs of the database's per-record CPU to the client;
# at batch 100, 66.8 against 49.5 µs per record (25 against 7 µs of client CPU: a batch's
# fixed costs, four more statements and the Python sums over more rollup rows per record).
# So the SQL form stays. (Passing the Python rollup rows as arrays to unnest: 62.7 µs.)
_INSERT = f"""
WITH ins AS (
    INSERT INTO usage ({", ".join(_COLS)})
    SELECT {", ".join(c if c not in ("tags", "payload") else c + "::jsonb" for c in _COLS)}
    FROM usage_in ORDER BY id
    ON CONFLICT (id) DO NOTHING
    RETURNING id, ts, provider, model, {", ".join(_TOKENS)}, cost, currency, user_id,
        customer_key, session_id, tags, {", ".join(_PARTS)}
), roll AS (
    INSERT INTO usage_hourly
    SELECT {_HOUR}, provider, model, currency, {_SUMS} FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (hour, provider, model, currency) DO UPDATE SET {_ADD.format(table="usage_hourly")}
), daily AS (
    INSERT INTO usage_daily {_DAILY_ROWS.format(src="ins")}
)
SELECT id FROM ins"""
#: the staging table's column types, for binary COPY (tags and payload go as JSON text):
#: 4.5-4.7 against 6.2-6.3 µs of client CPU per record for text COPY, and 34.7-39.7 against
#: 36.6-37.4 µs per record of wall time (batch 1,000, 100,000 records stored; 16
#: alternating rounds, noise ±3 µs); at batch 100, 49.5 against 52.0 µs, lower in each of
#: 12 alternating rounds
_COPY_TYPES = ("text", "timestamptz", "text", "text", *["int8"] * 5, "numeric", *["text"] * 8,
               *["int8"] * 5, "text")
_COPY = f"COPY usage_in ({', '.join(_COLS)}) FROM STDIN (FORMAT BINARY)"
_DAILY_BACKFILL = f"INSERT INTO usage_daily {_DAILY_ROWS.format(src='usage')}"
#: the month rows of a database from before them, from its day rows
_MONTHS_FROM_DAYS = f"""INSERT INTO usage_daily
    {_MONTHS_OF.format(days=f"usage_daily WHERE left(dim, 1) <> '{MONTH}'")} ORDER BY 1, 2, 3, 4
    ON CONFLICT (dim, value, day, currency) DO UPDATE SET {_ADD.format(table="usage_daily")}"""
# Reprice changes rows' cost in place: their sums leave the rollups (negated), the rows
# change, their new sums enter; one transaction. Each statement sees the rows as they are
# when it starts, so the three are separate.
_REPRICE_TEMP = ("CREATE TEMP TABLE IF NOT EXISTS reprice_in (id TEXT PRIMARY KEY, cost NUMERIC, "
                 "currency TEXT) ON COMMIT DELETE ROWS")
_NEG_SUMS = ", ".join(f"-{x}" for x in ["count(*)", *(f"sum({t})" for t in _TOKENS),
                                         "coalesce(sum(cost), 0)", "(count(*) FILTER (WHERE cost IS NULL))",
                                         *(f"sum({t})" for t in _PARTS)])


def _rollups_of_changed(sums: str) -> str:
    return f"""
WITH chg AS (SELECT * FROM usage WHERE id IN (SELECT id FROM reprice_in)), roll AS (
    INSERT INTO usage_hourly
    SELECT {_HOUR}, provider, model, currency, {sums} FROM chg GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (hour, provider, model, currency) DO UPDATE SET {_ADD.format(table="usage_hourly")}
)
INSERT INTO usage_daily {_DAILY_ROWS.format(src="chg").replace(_SUMS, sums)}"""


_REPRICE = [
    _rollups_of_changed(_NEG_SUMS),
    "UPDATE usage AS u SET cost = r.cost, currency = r.currency FROM reprice_in AS r WHERE u.id = r.id",
    _rollups_of_changed(_SUMS),
    "DELETE FROM usage_hourly WHERE count = 0",
    "DELETE FROM usage_daily WHERE count = 0",
]
_ROLLUP_BACKFILL = (f"INSERT INTO usage_hourly SELECT {_HOUR}, provider, model, currency, {_SUMS} "
                    "FROM usage GROUP BY 1, 2, 3, 4")
#: attempts of a batch that PostgreSQL aborted to break a deadlock (nothing of it is stored)
_DEADLOCK_ATTEMPTS = 3
_SELECT = f"SELECT {', '.join(_COLS)} FROM usage"
_RUN_COLUMNS = (
    "agent_name = ({merged})->>'agent_name', status = ({merged})->>'status', "
    "started_at = ({merged})->>'start_time'"
)


def _unmarked(step: str) -> None:
    pass


def _usage_row(rec: UsageRecord) -> list[Any]:
    """The staging row of one record (the record's fields are the table's columns, in
    order): 0.7 against 1.4 µs per record for the row written field by field."""
    row = list(_astuple(rec))
    if row[1].tzinfo is None:  # naive: UTC (the binary timestamptz dumper needs a zone)
        row[1] = to_utc(row[1])
    row[16] = encode(rec.tags).decode() if rec.tags else "{}"
    if rec.payload is not None:
        row[17] = encode(rec.payload).decode()
    return row


def _rows(cur: Any) -> list[tuple[Any, ...]]:
    return cur.fetchall() if cur.description else []


def _import_psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise ImportError(
            "the postgres backend needs psycopg 3: pip install 'usageledger[postgres]'"
        ) from None
    return psycopg, psycopg_pool


class PostgresStorage(SqlBudgets, SqlPrices, SqlKeys, SqlRetention, RunStore, StorageBackend):
    """``PostgresStorage(url, min_size=1, max_size=4)``; thread-safe (a connection pool)."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 4, timeout: float = 30.0):
        psycopg, psycopg_pool = _import_psycopg()
        self._psycopg = psycopg
        self.url = url
        self._explain: list[str] | None = None
        with psycopg.connect(url, autocommit=True) as conn:
            self._migrate(conn)
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=min_size, max_size=max_size, timeout=timeout,
            configure=self._configure, open=True,
        )

    @staticmethod
    def _migrate(conn: Any) -> None:
        # one migrator at a time when several collectors start together
        conn.execute("SELECT pg_advisory_lock(7301460)")
        try:
            had_hourly, had_daily = conn.execute(
                "SELECT to_regclass('usage_hourly'), to_regclass('usage_daily')").fetchone()
            for ddl in _SCHEMA:
                conn.execute(ddl)
            have = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'usage' AND table_schema = current_schema()"
            )}
            for k, decl in _COLUMNS.items():
                if k not in have:
                    conn.execute(f"ALTER TABLE usage ADD COLUMN {k} {decl.replace(' PRIMARY KEY', '')}")
                    log.info("added column %s to an older usage table", k)
            for table in ("usage_hourly", "usage_daily"):
                for c in _PARTS:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {c} NUMERIC NOT NULL DEFAULT 0")
            for ddl in _INDEXES:
                conn.execute(ddl)
            if had_daily is None:  # a database from before the daily totals: build them
                conn.execute(_DAILY_BACKFILL)
            if had_hourly is None:  # nor the hourly rollup (dropped, or never made)
                conn.execute(_ROLLUP_BACKFILL)
            if conn.execute(MONTH_ROWS_MISSING).fetchone()[0]:
                conn.execute(_MONTHS_FROM_DAYS)  # daily totals from before the month rows
            rollup_cols = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'usage_hourly' AND table_schema = current_schema()"
            )}
            if "currency" not in rollup_cols:
                # a rollup keyed without currency added money across currencies: rebuild it
                log.info("rebuilding usage_hourly with a currency key")
                with conn.transaction():
                    conn.execute("DROP TABLE usage_hourly")
                    conn.execute(_SCHEMA[1])
                    conn.execute(_ROLLUP_BACKFILL)
        finally:
            conn.execute("SELECT pg_advisory_unlock(7301460)")

    @staticmethod
    def _configure(conn: Any) -> None:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute(_TEMP)
        conn.commit()

    # -- writes -----------------------------------------------------------------------------
    def save_many(self, records: Iterable[UsageRecord]) -> set[str]:
        rows = [_usage_row(rec) for rec in unique_records(records).values()]
        if not rows:
            return set()
        for attempt in range(_DEADLOCK_ATTEMPTS):
            try:
                return self._insert(rows)
            except self._psycopg.errors.DeadlockDetected:
                # rollup rows are locked in one order, so this is rare; the batch was
                # rolled back whole, so trying again stores each id once
                if attempt == _DEADLOCK_ATTEMPTS - 1:
                    raise
                log.info("batch of %d records hit a deadlock; trying again", len(rows))
        raise AssertionError("unreachable")

    def _insert(self, rows: list[list[Any]], mark: Callable[[str], None] = _unmarked) -> set[str]:
        """One batch in one transaction; ``mark(step)`` is called after each step (the
        benchmark times them with it)."""
        with self._pool.connection() as conn:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(_COPY) as copy:
                    copy.set_types(_COPY_TYPES)
                    for row in rows:
                        copy.write_row(row)
                mark("binary COPY into the staging table")
                # not prepared: psycopg prepares a statement run five times, and the plan
                # PostgreSQL then keeps is made once for a staging table whose size changes
                # with every batch. With the month rows counted from the records (before
                # they came from the day rows) the prepared form ran 2x slower at batch
                # 1,000 (117 against 56 µs of server CPU per record) and 7x at batch 100
                # (875 against 129 µs per record); with the statement as it is now, within
                # ±10% either way (41.3 against 45.9 µs at batch 1,000, 117 against 105 at
                # batch 100: planning each batch costs about a millisecond). Unprepared,
                # a batch never runs on a plan made for another.
                cur.execute(_INSERT, prepare=False)
                new = {r[0] for r in cur.fetchall()}
                mark("INSERT ... RETURNING + hourly and daily rollups (one statement)")
            mark("commit")
        return new

    def replace_costs(self, records: Sequence[UsageRecord]) -> int:
        """Store the cost and currency of ``records`` on the stored rows of the same id, the
        rollups following exactly, in one transaction; returns how many rows changed."""
        batch = unique_records(records)
        if not batch:
            return 0
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(_REPRICE_TEMP)
            with cur.copy("COPY reprice_in (id, cost, currency) FROM STDIN") as copy:
                for r in sorted(batch.values(), key=lambda r: r.id):
                    copy.write_row((r.id, r.cost, r.currency))
            n = cur.execute("SELECT count(*) FROM usage WHERE id IN (SELECT id FROM reprice_in)").fetchone()[0]
            for sql in _REPRICE:
                cur.execute(sql)
            return n

    # -- reads ------------------------------------------------------------------------------
    @staticmethod
    def _where(f: Filters) -> tuple[str, list[Any]]:
        from psycopg.types.json import Jsonb

        clauses, params = filter_clauses(f, "%s", "ts", from_us)
        if f.tags:
            clauses.append("tags @> %s")
            params.append(Jsonb(dict(f.tags)))
        return where_sql(clauses), params

    @staticmethod
    def _record(row: tuple[Any, ...]) -> UsageRecord:
        return UsageRecord(*row[:16], row[16] or {}, *row[17:])

    def _query(self, f: Filters, limit: int | None, offset: int) -> list[UsageRecord]:
        where, params = self._where(f)
        sql = f"{_SELECT}{where} ORDER BY ts DESC, id DESC LIMIT %s OFFSET %s"
        return [self._record(r) for r in self._fetch(sql, [*params, limit, offset])]

    def iter_records(self, batch_size: int = 5000, **filters: Any) -> Iterator[UsageRecord]:
        """Newest first in pages that continue after the last (ts, id) seen (keyset), so
        every page costs the same however deep it is."""
        where, params = self._where(make_filters(**filters))
        for rows in keyset_pages(_SELECT, where, params, "%s", batch_size, self._fetch):
            yield from map(self._record, rows)

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    @staticmethod
    def _group_sql(key: str, rollup: bool, params: list[Any]) -> str:
        hour = "hour" if rollup else _HOUR
        if key == "day":
            return f"floor({hour} / 24.0)::bigint" if rollup else "floor(extract(epoch FROM ts) / 86400)::bigint"
        if key == "hour":
            return hour
        if key.startswith("tag:"):
            params.append(key[4:])
            return "tags ->> %s"
        return key

    def _aggregate(self, keys: tuple[str, ...], f: Filters) -> list[Aggregate]:
        with self._pool.connection() as conn:
            plan = None if rollup_fits(keys, f) else daily_plan(keys, f, months=True)
            if plan is not None:
                groups = self._aggregate_daily(conn, keys, plan)
            else:
                groups = self._aggregate_sql(conn, keys, f)
        return finish_groups(keys, groups)

    def explain_aggregate(self, group_by: Sequence[str] | str = ("day",), **filters: Any) -> list[str]:
        """The query plans (``EXPLAIN`` lines) of the statements ``aggregate`` runs for
        these arguments, e.g. to check that totals come from a rollup."""
        self._explain = []
        try:
            self.aggregate(group_by, **filters)
            return self._explain
        finally:
            self._explain = None

    def _select(self, conn: Any, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        if self._explain is not None:
            self._explain += [r[0] for r in conn.execute("EXPLAIN " + sql, params)]
        return conn.execute(sql, params).fetchall()

    def _aggregate_daily(self, conn: Any, keys: tuple[str, ...], plan: DailyPlan) -> dict:
        """Totals from ``usage_daily`` plus the partial days at the edges of the range."""
        sql, params = daily_sql(keys, plan, "%s", _ROLLUP_SUMS)
        groups = self._groups(keys, self._select(conn, sql, params))
        if plan.grouped:
            sql, params = daily_sql(keys, plan, "%s", _ROLLUP_SUMS, total=True)
            rest = tuple(k for k in keys if k != plan.dim)
            totals = self._groups(rest, self._select(conn, sql, params))
            groups = with_none_group(keys, plan.dim, groups, totals)
        for edge in plan.edges:
            merge_groups(groups, self._aggregate_sql(conn, keys, edge))
        return groups

    def _aggregate_sql(self, conn: Any, keys: tuple[str, ...], f: Filters) -> dict:
        rollup = rollup_fits(keys, f)
        params: list[Any] = []
        exprs = [self._group_sql(k, rollup, params) for k in keys]
        if rollup:
            where, wparams = rollup_where(f, "%s")
            params += wparams
            sql = f"SELECT {', '.join([*exprs, _ROLLUP_SUMS])} FROM usage_hourly{where}"
        else:
            where, wparams = self._where(f)
            params += wparams
            sql = f"SELECT {', '.join([*exprs, _SUMS])} FROM usage{where}"
        return self._groups(keys, self._select(conn, sql + group_by_sql(len(keys)), params))

    @staticmethod
    def _groups(keys: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict:
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        n = len(keys)
        for row in rows:
            if not row[n]:
                continue  # an empty table aggregated without GROUP BY
            gk = tuple(group_value(k, v) for k, v in zip(keys, row[:n], strict=True))
            t = groups.setdefault(gk, zero_totals())
            t["count"] += int(row[n])
            for i, name in enumerate(_TOKENS):
                t[name] += int(row[n + 1 + i] or 0)
            t["cost"] += row[n + 6]
            t["unknown_cost"] += int(row[n + 7])
            for i, name in enumerate(_PARTS):
                t[name] += int(row[n + 8 + i] or 0)
        return groups

    def count(self) -> int:
        with self._pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM usage").fetchone()[0]

    _placeholder = "%s"

    def _side_sql(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn, conn.transaction():
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def _create_budget_tables(self) -> None:
        # one creator at a time when several collectors start together (as _migrate)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7301460)")
            for ddl in BUDGET_TABLES:
                conn.execute(ddl)

    def _create_price_tables(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7301460)")
            for ddl in PRICE_TABLES:
                conn.execute(ddl)

    def _create_key_tables(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7301460)")
            for ddl in KEY_TABLES:
                conn.execute(ddl)

    # -- runs -------------------------------------------------------------------------------
    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        from psycopg.types.json import Jsonb

        checked = [(w, run_fields(w)) for w in writes]
        results: list[str] = []
        merged = "runs.data || %(data)s"
        with self._pool.connection() as conn, conn.transaction():
            for w, fields in checked:
                p = {"run_id": w.run_id, "seq": w.seq,
                     "data": Jsonb({**fields, "run_id": w.run_id, "seq": w.seq})}
                if w.create:
                    # the seq check is the WHERE of the upsert: an older write changes nothing
                    row = conn.execute(
                        "INSERT INTO runs (run_id, seq, agent_name, status, started_at, data) "
                        "VALUES (%(run_id)s, %(seq)s, %(data)s->>'agent_name', %(data)s->>'status', "
                        "%(data)s->>'start_time', %(data)s) "
                        "ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, "
                        f"data = {merged}, {_RUN_COLUMNS.format(merged=merged)} "
                        "WHERE runs.seq < excluded.seq RETURNING (xmax = 0)",
                        p,
                    ).fetchone()
                    results.append(DUPLICATE if row is None else CREATED if row[0] else UPDATED)
                else:
                    row = conn.execute(
                        f"UPDATE runs SET seq = %(seq)s, data = {merged}, "
                        f"{_RUN_COLUMNS.format(merged=merged)} "
                        "WHERE run_id = %(run_id)s AND seq < %(seq)s RETURNING 1",
                        p,
                    ).fetchone()
                    if row is not None:
                        results.append(UPDATED)
                    else:
                        exists = conn.execute(
                            "SELECT 1 FROM runs WHERE run_id = %s", (w.run_id,)
                        ).fetchone()
                        results.append(STALE if exists else MISSING)
        return results

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT data FROM runs WHERE run_id = %s", (run_id,)).fetchone()
        return None if row is None else row[0]

    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        sql, params = runs_query_sql(agent_name, status, "%s")
        return [r[0] for r in self._fetch(sql, [*params, limit, offset])]

    def _query_project_runs(
        self, project: str, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        sql, params = runs_query_sql(agent_name, status, "%s", "data->>'project'", project)
        return [r[0] for r in self._fetch(sql, [*params, limit, offset])]

    def _create_retention_tables(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7301460)")
            for ddl in RETENTION_TABLES:
                conn.execute(ddl)

    # -- retention (storage/_retention.py) ------------------------------------------------------
    def _fold_batch(self, cutoff_us: int, project: str | None, excluded: list[str], batch: int) -> int:
        """One batch folded, taken out of the hourly/daily totals and deleted, in one
        transaction; one retention at a time (an advisory lock), the rows locked against a
        concurrent reprice."""
        clause, params = project_clause(project, excluded, f"(tags->>'{PROJECT_TAG}')", "%s")
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(7301461)")
            cur.execute(_REPRICE_TEMP)
            cur.execute(f"INSERT INTO reprice_in (id) SELECT id FROM (SELECT id FROM usage WHERE "
                        f"ts < %s{clause} ORDER BY ts LIMIT %s FOR UPDATE) AS o ORDER BY id",
                        [from_us(cutoff_us), *params, batch])
            rows = cur.execute(
                f"SELECT ts, tags, {', '.join(FOLD_COLUMNS)} "
                "FROM usage WHERE id IN (SELECT id FROM reprice_in)").fetchall()
            if not rows:
                return 0
            folded = fold_rows((ts_us(r[0]), r[1], *r[2:]) for r in rows)
            cur.execute(_rollups_of_changed(_NEG_SUMS))
            cur.execute("DELETE FROM usage WHERE id IN (SELECT id FROM reprice_in)")
            cur.execute("DELETE FROM usage_hourly WHERE count = 0")
            cur.execute("DELETE FROM usage_daily WHERE count = 0")
            self._fold_into(lambda sql, p: _rows(cur.execute(sql, p)), cur.executemany, folded)
        return len(rows)

    def _fold_runs_batch(self, cutoff_us: int, project: str | None, excluded: list[str], batch: int) -> int:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(7301461)")
            gone, counts = [], {}
            for run_id, data in cur.execute("SELECT run_id, data FROM runs WHERE started_at IS NOT NULL "
                                            "ORDER BY run_id FOR UPDATE").fetchall():
                us, rest = run_day_project(data)
                if us is None or us >= cutoff_us or (project is not None and rest[0] != project) or (
                        project is None and rest[0] in excluded):
                    continue
                gone.append((run_id,))
                key = (us // 86_400_000_000, *rest)
                counts[key] = counts.get(key, 0) + 1
                if len(gone) >= batch:
                    break
            cur.executemany("DELETE FROM runs WHERE run_id = %s", gone)
            self._fold_runs_into(lambda sql, p: _rows(cur.execute(sql, p)), counts)
        return len(gone)

    def clear(self) -> None:
        with self._pool.connection() as conn:
            conn.execute("TRUNCATE usage, usage_hourly, usage_daily, runs")
            if conn.execute("SELECT to_regclass('usage_retained')").fetchone()[0] is not None:
                conn.execute("TRUNCATE usage_retained, runs_retained, retention_marks")

    def close(self) -> None:
        self._pool.close()
