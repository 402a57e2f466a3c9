"""ClickHouse storage: ``clickhouse://user:pass@host:8123/db`` (a server or cluster, through
``clickhouse-connect``) or ``chdb:///path`` (the same engine embedded in this process, through
``chdb``). Extra ``usageledger[clickhouse]``. For aggregates over 10^7+ records.

Exactly once: ``usage`` is a ``ReplacingMergeTree`` ordered by ``id`` and every read says
``FINAL``, so a record inserted twice (two collector replicas racing, a retry whose answer
was lost) is counted once in every query and aggregate, before and after ClickHouse merges
the copies. ``save_many`` also looks up the batch's ids first and inserts only the new
ones, under a lock: within one process its answer (the ids newly stored) is exact; two
processes writing one server may both report a racing id as new, and it is still stored
and counted once. ClickHouse has no transactions across statements: that report is the
only part of the contract that is not atomic here.

Money: ``cost`` keeps the exact text; ``cost_dec`` (``Decimal(38, 18)``) holds it for sums
inside the engine whenever it fits (18 decimals, 20 integer digits); a cost that does not
fit keeps ``cost_dec`` NULL and is summed from its text in Python. No floats anywhere.

Timestamps are UTC microseconds (Int64), as in the SQLite backend; ``day`` and ``hour``
groups are integer divisions of them.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from ..schema.records import UsageRecord, encode
from ..schema.totals import PART_SUMS
from ._sql import group_by_sql, group_value
from .aggregate import Aggregate, finish_groups, zero_totals
from .base import RunStore, RunWrite, StorageBackend, unique_records
from .filters import _US_PER_DAY, _US_PER_HOUR, Filters, from_us, ts_us
from .runs import apply_run_write, page_runs

__all__ = ["ClickHouseStorage"]

_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "reasoning_tokens")
_USAGE = """CREATE TABLE IF NOT EXISTS {db}.usage (
    id String, ts Int64, provider LowCardinality(String), model LowCardinality(String),
    input_tokens Int64, output_tokens Int64, cache_read_tokens Int64, cache_write_tokens Int64,
    reasoning_tokens Int64, cost Nullable(String), cost_dec Nullable(Decimal(38, 18)),
    currency LowCardinality(String), user_id Nullable(String), session_id Nullable(String),
    customer_key Nullable(String), run_id Nullable(String), response_id Nullable(String),
    tags Map(String, String), payload Nullable(String),
    INDEX usage_ts ts TYPE minmax GRANULARITY 1
) ENGINE = ReplacingMergeTree ORDER BY id"""
#: columns added after the first release: a table without them gains them at open
#: (ADD COLUMN IF NOT EXISTS; old rows read the default, which is what they carried)
_ADDED = {
    "cache_write_1h_tokens": "Int64 DEFAULT 0",
    "input_audio_tokens": "Int64 DEFAULT 0",
    "output_audio_tokens": "Int64 DEFAULT 0",
    "input_image_tokens": "Int64 DEFAULT 0",
    "output_image_tokens": "Int64 DEFAULT 0",
    "service_tier": "Nullable(String)",
}
# one row per run write that changed it; the highest seq wins (read with FINAL)
_RUNS = """CREATE TABLE IF NOT EXISTS {db}.runs (
    run_id String, seq Int64, data String
) ENGINE = ReplacingMergeTree(seq) ORDER BY run_id"""
_INSERT_COLS = ("id", "ts", "provider", "model", *_TOKENS, "cost", "cost_dec", "currency",
                "user_id", "session_id", "customer_key", "run_id", "response_id", "tags", "payload",
                *_ADDED)
_COLS = ("id", "ts", "provider", "model", *_TOKENS, "cost", "currency", "user_id", "session_id",
         "customer_key", "run_id", "response_id", "tags", "payload", *_ADDED)
#: JSON output with 64-bit integers as numbers and decimals as exact strings
_SETTINGS = " SETTINGS output_format_json_quote_64bit_integers=0, output_format_json_quote_decimals=1"
_SUMS = ", ".join([
    "count()", *(f"sum({t})" for t in _TOKENS), "sum(cost_dec)", "countIf(cost IS NULL)",
    "groupArrayIf(cost, cost IS NOT NULL AND cost_dec IS NULL)", *(f"sum({t})" for t in PART_SUMS),
])
_MAX_DEC = Decimal(10) ** 20
_MAX_QUERY = 64 << 20
_decode = msgspec.json.decode

#: chdb runs one embedded server per process, on one directory: stores on the same
#: directory share it (path -> [session, users])
_chdb_lock = threading.Lock()
_chdb_open: dict[str, list[Any]] = {}


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _exact(text: str) -> Decimal:
    """A Decimal(38, 18) sum as ClickHouse prints it, without its trailing zeros."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return Decimal(text)


def _cost_dec(cost: Decimal | None, text: str | None) -> str | None:
    """``text`` (``str(cost)``) if ``Decimal(38, 18)`` holds it exactly, else None."""
    if cost is None or text is None:
        return None
    if "E" not in text:  # plain notation: string checks, ~5x cheaper than normalize()
        whole, _, frac = text.partition(".")
        return text if len(frac.rstrip("0")) <= 18 and len(whole) <= 20 else None
    n = cost.normalize()
    if n.as_tuple().exponent < -18 or abs(n) >= _MAX_DEC:  # type: ignore[operator]
        return None
    return format(n, "f")


class _Chdb:
    """The embedded engine: one chdb session on ``path``, shared by this process's stores."""

    def __init__(self, path: Path):
        try:
            from chdb import session
        except ImportError:
            raise ImportError("the chdb backend needs chdb: pip install 'usageledger[clickhouse]'") from None
        self.path = str(path)
        self.where = f"chdb:///{path}"
        with _chdb_lock:
            entry = _chdb_open.get(self.path)
            if entry is None:
                others = [p for p in _chdb_open if p != self.path]
                if others:
                    raise RuntimeError(
                        f"chdb opens one directory per process: {others[0]} is open here, so "
                        f"{self.path} cannot be (close the other store first)"
                    )
                path.mkdir(parents=True, exist_ok=True)
                try:
                    entry = _chdb_open[self.path] = [session.Session(self.path), 0]
                except RuntimeError as exc:
                    raise RuntimeError(
                        f"cannot open chdb store {self.path}: {exc} (is another process using it? "
                        "an embedded store belongs to one process; several collectors need a "
                        "ClickHouse server: clickhouse://...)"
                    ) from None
                # the id look-up of a 20,000-record batch is ~1 MB of SQL (default limit 256 KiB)
            entry[0].query(f"SET max_query_size = {_MAX_QUERY}")
        entry[1] += 1
        self._session = entry[0]
        self._lock = threading.Lock()  # one statement at a time on the embedded engine

    def rows(self, sql: str) -> list[list[Any]]:
        with self._lock:
            data = self._session.query(sql + _SETTINGS, "JSONCompactEachRow").bytes()
        return _decode(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]") if data else []

    def command(self, sql: str) -> None:
        with self._lock:
            self._session.query(sql)

    def insert(self, table: str, rows: bytes) -> None:
        with self._lock:
            self._session.query(f"INSERT INTO {table} FORMAT JSONCompactEachRow\n" + rows.decode())

    def close(self) -> None:
        with _chdb_lock:
            entry = _chdb_open.get(self.path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del _chdb_open[self.path]
                entry[0].close()


class _Server:
    """A ClickHouse server over HTTP(S) through clickhouse-connect."""

    def __init__(self, url: str):
        try:
            import clickhouse_connect
        except ImportError:
            raise ImportError(
                "the clickhouse backend needs clickhouse-connect: pip install 'usageledger[clickhouse]'"
            ) from None
        parts = urlsplit(url)
        secure = parts.scheme.lower() == "clickhouses"
        self.database = parts.path.strip("/") or "default"
        self.where = f"{parts.scheme}://{parts.hostname}:{parts.port or (8443 if secure else 8123)}/{self.database}"
        self._client = clickhouse_connect.get_client(
            host=parts.hostname or "localhost", port=parts.port or (8443 if secure else 8123),
            username=unquote(parts.username or "default"), password=unquote(parts.password or ""),
            secure=secure, settings={"max_query_size": _MAX_QUERY},
        )

    def rows(self, sql: str) -> list[list[Any]]:
        data = self._client.raw_query(sql + _SETTINGS, fmt="JSONCompactEachRow")
        return _decode(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]") if data else []

    def command(self, sql: str) -> None:
        self._client.command(sql)

    def insert(self, table: str, rows: bytes) -> None:
        name, _, cols = table.partition(" ")
        self._client.raw_insert(name, [c.strip() for c in cols.strip("()").split(",")] if cols else None,
                                insert_block=rows, fmt="JSONCompactEachRow")

    def close(self) -> None:
        self._client.close()


class ClickHouseStorage(RunStore, StorageBackend):
    """``ClickHouseStorage(url="clickhouse://user:pass@host:8123/db")`` or
    ``ClickHouseStorage(path="/var/lib/usage.chdb")`` (embedded). Thread-safe."""

    def __init__(self, url: str | None = None, *, path: str | Path | None = None):
        if (url is None) == (path is None):
            raise ValueError("ClickHouseStorage needs url='clickhouse://...' or path= (chdb), not both")
        if path is not None:
            self.path = Path(path).expanduser().resolve()
            self._engine: Any = _Chdb(self.path)
            self._db = "usageledger"
        else:
            self._engine = _Server(url)  # type: ignore[arg-type]
            self._db = self._engine.database
        self.location = self._engine.where
        self._lock = threading.Lock()  # look-up then insert: one save_many at a time here
        try:
            self._engine.command(f"CREATE DATABASE IF NOT EXISTS {self._db}")
            self._engine.command(_USAGE.format(db=self._db))
            for column, decl in _ADDED.items():
                self._engine.command(f"ALTER TABLE {self._db}.usage ADD COLUMN IF NOT EXISTS {column} {decl}")
            self._engine.command(_RUNS.format(db=self._db))
            # ids of the batch being saved; one per store (a server is shared by collectors)
            suffix = "" if path is not None else "_" + uuid.uuid4().hex[:12]
            self._staging = f"{self._db}.usage_ids{suffix}"
            self._engine.command(f"CREATE TABLE IF NOT EXISTS {self._staging} (id String) ENGINE = Memory")
        except BaseException:
            self._engine.close()
            raise

    # -- writes -----------------------------------------------------------------------------
    def _existing(self, ids: list[str]) -> set[str]:
        # the ids go in as data, not SQL: parsing a 50,000-literal IN list took 1-3 s here,
        # loading them into a Memory table takes milliseconds
        staged = self._staging
        self._engine.command(f"TRUNCATE TABLE {staged}")
        self._engine.insert(f"{staged} (id)", b"\n".join(encode([i]) for i in ids))
        rows = self._engine.rows(f"SELECT id FROM {self._db}.usage WHERE id IN {staged}")
        return {r[0] for r in rows}

    @staticmethod
    def _row(rec: UsageRecord) -> list[Any]:
        """One record as a JSONCompactEachRow row, in :data:`_INSERT_COLS` order."""
        cost = None if rec.cost is None else str(rec.cost)
        return [
            rec.id, ts_us(rec.timestamp), rec.provider, rec.model, rec.input_tokens,
            rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens, rec.reasoning_tokens,
            cost, _cost_dec(rec.cost, cost), rec.currency,
            rec.user_id, rec.session_id, rec.customer_key, rec.run_id, rec.response_id, rec.tags,
            None if rec.payload is None else encode(rec.payload).decode(),
            rec.cache_write_1h_tokens, rec.input_audio_tokens, rec.output_audio_tokens,
            rec.input_image_tokens, rec.output_image_tokens, rec.service_tier,
        ]

    def _insert(self, records: Iterable[UsageRecord]) -> None:
        """Insert without looking for known ids (what two racing writers end up doing)."""
        data = b"\n".join(encode(self._row(r)) for r in records)
        if data:
            self._engine.insert(f"{self._db}.usage ({', '.join(_INSERT_COLS)})", data)

    def save_many(self, records: Iterable[UsageRecord]) -> set[str]:
        batch = unique_records(records)
        if not batch:
            return set()
        with self._lock:
            known = self._existing(list(batch))
            new = [r for i, r in batch.items() if i not in known]
            self._insert(new)
        return {r.id for r in new}

    # -- reads ------------------------------------------------------------------------------
    @staticmethod
    def _where(f: Filters) -> str:
        clauses = [f"{k} = {_quote(v)}" for k, v in f.equalities()]
        if f.since is not None:
            clauses.append(f"ts >= {int(f.since)}")
        if f.until is not None:
            clauses.append(f"ts < {int(f.until)}")
        for k, v in f.tags:
            clauses.append(f"mapContains(tags, {_quote(k)}) AND tags[{_quote(k)}] = {_quote(v)}")
        return (" WHERE " + " AND ".join(clauses)) if clauses else ""

    @staticmethod
    def _record(row: list[Any]) -> UsageRecord:
        (id_, ts, provider, model, i, o, cr, cw, rs, cost, currency, user_id, session_id,
         customer_key, run_id, response_id, tags, payload, *details) = row
        return UsageRecord(
            id_, from_us(ts), provider, model, i, o, cr, cw, rs,
            None if cost is None else Decimal(cost), currency, user_id, session_id, customer_key,
            run_id, response_id, tags or {}, None if payload is None else _decode(payload), *details,
        )

    def _query(self, f: Filters, limit: int | None, offset: int) -> list[UsageRecord]:
        page = "" if limit is None else f" LIMIT {int(limit)}"
        if offset:
            page = (page or " LIMIT 18446744073709551615") + f" OFFSET {int(offset)}"
        sql = (f"SELECT {', '.join(_COLS)} FROM {self._db}.usage FINAL{self._where(f)}"
               f" ORDER BY ts DESC, id DESC{page}")
        return [self._record(r) for r in self._engine.rows(sql)]

    @staticmethod
    def _group_sql(key: str) -> str:
        if key in ("day", "hour"):
            unit = _US_PER_DAY if key == "day" else _US_PER_HOUR
            return f"(intDiv(ts, {unit}) - (ts < 0 AND ts % {unit} != 0))"  # floor, also before 1970
        if key.startswith("tag:"):
            k = _quote(key[4:])
            return f"if(mapContains(tags, {k}), tags[{k}], NULL)"
        return key

    def _aggregate(self, keys: tuple[str, ...], f: Filters) -> list[Aggregate]:
        exprs = [self._group_sql(k) for k in keys]
        sql = (f"SELECT {', '.join([*exprs, _SUMS])} FROM {self._db}.usage FINAL{self._where(f)}"
               + group_by_sql(len(keys)))
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        n = len(keys)
        for row in self._engine.rows(sql):
            if not row[n]:
                continue  # an empty table aggregated without GROUP BY
            gk = tuple(group_value(k, v) for k, v in zip(keys, row[:n], strict=True))
            t = groups.setdefault(gk, zero_totals())
            t["count"] += row[n]
            for i, name in enumerate(_TOKENS):
                t[name] += row[n + 1 + i]
            t["cost"] += _exact(row[n + 6] or "0") + sum((Decimal(c) for c in row[n + 8]), Decimal(0))
            t["unknown_cost"] += row[n + 7]
            for i, name in enumerate(PART_SUMS):
                t[name] += row[n + 9 + i]
        return finish_groups(keys, groups)

    def count(self) -> int:
        return self._engine.rows(f"SELECT count() FROM {self._db}.usage FINAL")[0][0]

    # -- runs -------------------------------------------------------------------------------
    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        results: list[str] = []
        changed: dict[str, dict[str, Any]] = {}
        with self._lock:
            for w in writes:
                stored = changed.get(w.run_id) if w.run_id in changed else self.get_run(w.run_id)
                outcome, new = apply_run_write(stored, w)
                results.append(outcome)
                if new is not None:
                    changed[w.run_id] = new
            if changed:
                data = b"\n".join(
                    encode([k, v["seq"], encode(v).decode()]) for k, v in changed.items())
                self._engine.insert(f"{self._db}.runs (run_id, seq, data)", data)
        return results

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._engine.rows(
            f"SELECT data FROM {self._db}.runs FINAL WHERE run_id = {_quote(run_id)}")
        return _decode(rows[0][0]) if rows else None

    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        runs = [_decode(r[0]) for r in self._engine.rows(f"SELECT data FROM {self._db}.runs FINAL")]
        return page_runs(runs, agent_name, status, limit, offset)

    def clear(self) -> None:
        with self._lock:
            self._engine.command(f"TRUNCATE TABLE {self._db}.usage")
            self._engine.command(f"TRUNCATE TABLE {self._db}.runs")

    def close(self) -> None:
        if isinstance(self._engine, _Server):
            with contextlib.suppress(Exception):
                self._engine.command(f"DROP TABLE IF EXISTS {self._staging}")
        self._engine.close()
