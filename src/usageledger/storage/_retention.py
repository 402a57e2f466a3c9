"""Retention with exact daily rollups (the optional part of the storage contract that
``usageledger retention apply`` and ``serve --retention-days`` use).

``retain(cutoff, project=..., batch=...)`` folds the raw usage records older than
``cutoff`` into daily rollups keyed by (day, project, provider, model, user_id,
customer_key, currency) -- count, each token sum and the exact cost -- and deletes them.
Each batch is ONE transaction: the rows are read, added to the rollups, taken out of the
backend's own hourly/daily totals and deleted together, so a process killed at any point
leaves either the whole batch folded or none of it, and running retention again finishes
the job exactly.

``aggregate`` (see :func:`merge_retained`) adds the rollups to the raw records' totals
whenever the grouping and filters are among those dimensions (with whole-day time bounds):
summaries and budgets answer the same before and after. Other questions (by hour, session,
other tags) are answered from the raw records only, which ``raw_since`` dates.

Runs are folded the same way: a run whose ``start_time`` (else its last write) is older
than the cutoff is deleted with its events and counted in (day, project, agent_name,
status) rollups (:meth:`retained_runs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from ..schema.totals import PART_SUMS
from ._keys import PROJECT_TAG
from ._sql import SideSql
from .aggregate import (
    add_totals,
    cost_nano,
    finish_groups,
    merge_groups,
    nano_to_decimal,
    zero_totals,
)
from .filters import _US_PER_DAY, Filters, day_key, ts_us

__all__ = ["FOLD_COLUMNS", "RETAINED_KEYS", "MemoryRetention", "SqlRetention", "merge_retained", "fold_rows",
           "RETENTION_TABLES", "retained_fits"]

#: the dimensions the daily rollups keep (``project`` is the record's PROJECT_TAG)
RETAINED_KEYS = ("day", "project", "provider", "model", "user_id", "customer_key", "currency")
_GROUPABLE = {"day", "provider", "model", "user_id", "customer_key", "currency", f"tag:{PROJECT_TAG}"}
_TOTAL_NAMES = ("count", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "reasoning_tokens", "cost", "unknown_cost")

_DIM_COLUMNS = ("day", "project", "provider", "model", "user_id", "customer_key", "currency")
_SUM_COLUMNS = ("count", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "reasoning_tokens", "unknown_cost", *PART_SUMS)
RETENTION_TABLES = (
    # k: the JSON array of RETAINED_KEYS values (one row per key, None included); cost: the
    # exact sum as text, and in integer nano-units when that is exact (summed in SQL)
    "CREATE TABLE IF NOT EXISTS usage_retained (k TEXT PRIMARY KEY, day BIGINT NOT NULL, "
    "project TEXT, provider TEXT NOT NULL, model TEXT NOT NULL, user_id TEXT, customer_key TEXT, "
    "currency TEXT NOT NULL, count BIGINT NOT NULL, input_tokens BIGINT NOT NULL, "
    "output_tokens BIGINT NOT NULL, cache_read_tokens BIGINT NOT NULL, cache_write_tokens BIGINT NOT NULL, "
    "reasoning_tokens BIGINT NOT NULL, unknown_cost BIGINT NOT NULL, cost TEXT NOT NULL, cost_nano BIGINT, "
    + ", ".join(f"{p} BIGINT NOT NULL DEFAULT 0" for p in PART_SUMS) + ")",
    "CREATE TABLE IF NOT EXISTS runs_retained (k TEXT PRIMARY KEY, day BIGINT NOT NULL, "
    "count BIGINT NOT NULL)",
    # project '' is every project without a cutoff of its own; cutoff in UTC microseconds
    "CREATE TABLE IF NOT EXISTS retention_marks (project TEXT PRIMARY KEY, cutoff BIGINT NOT NULL)",
)

_dumps = msgspec.json.Encoder(decimal_format="string").encode
_loads = msgspec.json.decode

#: one folded row: (us, tags, provider, model, user_id, customer_key, currency,
#: input, output, cache_read, cache_write, reasoning, cost Decimal or None, *PART_SUMS)
Row = tuple[Any, ...]
#: the columns of a usage row that retention reads, in :data:`Row` order (after ts, tags)
FOLD_COLUMNS = ("provider", "model", "user_id", "customer_key", "currency", "input_tokens",
                "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost",
                *PART_SUMS)


def fold_rows(rows: Iterable[Row]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Daily totals of raw rows by :data:`RETAINED_KEYS` (exact: ints and Decimals)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for us, tags, provider, model, user, customer, currency, it, ot, cr, cw, rt, cost, *parts in rows:
        key = (us // _US_PER_DAY, (tags or {}).get(PROJECT_TAG), provider, model, user, customer, currency)
        t = out.get(key)
        if t is None:
            t = out[key] = zero_totals()
        t["count"] += 1
        t["input_tokens"] += it
        t["output_tokens"] += ot
        t["cache_read_tokens"] += cr
        t["cache_write_tokens"] += cw
        t["reasoning_tokens"] += rt
        for name, n in zip(PART_SUMS, parts, strict=True):
            t[name] += n or 0
        if cost is None:
            t["unknown_cost"] += 1
        else:
            t["cost"] += Decimal(cost)
    return out


def retained_fits(keys: Sequence[str], f: Filters) -> bool:
    """Whether the rollups can take part in this aggregate: groups and filters among their
    dimensions, time bounds on whole UTC days."""
    return (set(keys) <= _GROUPABLE and f.session_id is None
            and all(k == PROJECT_TAG for k, _ in f.tags)
            and (f.since is None or f.since % _US_PER_DAY == 0)
            and (f.until is None or f.until % _US_PER_DAY == 0))


def _matches(key: tuple[Any, ...], f: Filters) -> bool:
    day, project, provider, model, user, customer, _ = key
    for want, have in ((f.provider, provider), (f.model, model), (f.user_id, user),
                       (f.customer_key, customer)):
        if want is not None and want != have:
            return False
    for _, v in f.tags:
        if project != v:
            return False
    if f.since is not None and day < f.since // _US_PER_DAY:
        return False
    return not (f.until is not None and day >= f.until // _US_PER_DAY)


def merge_retained(store: Any, keys: tuple[str, ...], f: Filters,
                   rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (an aggregate of the raw records) plus the rollups, when they fit."""
    if not getattr(store, "supports_retention", False) or not retained_fits(keys, f):
        return rows
    retained = store.retained_groups(keys, f)
    if not retained:
        return rows
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        groups[tuple(r[k] for k in keys)] = {k: r[k] for k in r if k not in keys and k != "total_tokens"}
    merge_groups(groups, retained)
    if not keys:
        return [dict(groups.get((), zero_totals()))]
    return finish_groups(keys, groups)


def project_clause(project: str | None, excluded: Sequence[str], extract: str, ph: str) -> tuple[str, list[Any]]:
    """SQL narrowing retention to one project's records, or (``project`` None) to those of
    no project in ``excluded`` (they have cutoffs of their own)."""
    if project is not None:
        return f" AND {extract} = {ph}", [project]
    if not excluded:
        return "", []
    return (f" AND ({extract} IS NULL OR {extract} NOT IN ({', '.join([ph] * len(excluded))}))",
            list(excluded))


def run_day_project(run: dict[str, Any], fallback_us: int | None = None) -> tuple[int | None, tuple[Any, ...]]:
    """A run's time (``start_time``, UTC microseconds) and its rollup key without the day."""
    started = run.get("start_time")
    us = fallback_us
    if isinstance(started, str):
        try:
            us = ts_us(datetime.fromisoformat(started.replace("Z", "+00:00")))
        except ValueError:
            pass
    return us, (run.get("project"), run.get("agent_name"), run.get("status"))


class MemoryRetention:
    """Rollups in dicts (the memory backend)."""

    supports_retention = True

    def _retention_state(self) -> tuple[dict[tuple[Any, ...], dict[str, Any]], dict[tuple[Any, ...], int], dict[str, int]]:
        state = self.__dict__.get("_ret_state")
        if state is None:
            state = self.__dict__.setdefault("_ret_state", ({}, {}, {}))
        return state

    def retained_groups(self, keys: tuple[str, ...], f: Filters) -> dict[tuple[Any, ...], dict[str, Any]]:
        """The rollups matching ``f``, summed by ``keys`` (values as ``aggregate`` gives them)."""
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        with self._lock:  # type: ignore[attr-defined]
            for key, t in self._retention_state()[0].items():
                if not _matches(key, f):
                    continue
                values = dict(zip(RETAINED_KEYS, key, strict=True))
                values["day"] = day_key(key[0] * _US_PER_DAY)
                values[f"tag:{PROJECT_TAG}"] = values["project"]
                gk = tuple(values[k] for k in keys)
                have = out.get(gk)
                if have is None:
                    out[gk] = dict(t)
                else:
                    add_totals(have, t)
        return out

    def retained_runs(self) -> dict[tuple[Any, ...], int]:
        with self._lock:  # type: ignore[attr-defined]
            return dict(self._retention_state()[1])

    def set_retention_mark(self, project: str | None, cutoff_us: int) -> None:
        with self._lock:  # type: ignore[attr-defined]
            marks = self._retention_state()[2]
            marks[project or ""] = max(cutoff_us, marks.get(project or "", cutoff_us))

    def retention_marks(self) -> dict[str, int]:
        with self._lock:  # type: ignore[attr-defined]
            return dict(self._retention_state()[2])

    def retain(self, cutoff_us: int, project: str | None = None, excluded: Sequence[str] = (),
               batch: int = 5000) -> int:
        usage, _, _ = self._retention_state()
        with self._lock:  # type: ignore[attr-defined]
            gone = []
            for us, id_, rec in self._rows:  # type: ignore[attr-defined]
                if us >= cutoff_us:
                    continue
                p = rec.tags.get(PROJECT_TAG) if rec.tags else None
                if (project is not None and p != project) or (project is None and p in excluded):
                    continue
                gone.append((us, id_, rec))
                if len(gone) >= batch:
                    break
            if not gone:
                return 0
            folded = fold_rows((us, rec.tags, *(getattr(rec, c) for c in FOLD_COLUMNS)) for us, _, rec in gone)
            self._forget_records(gone)  # type: ignore[attr-defined]
            merge_groups(usage, folded)
            return len(gone)

    def retain_runs(self, cutoff_us: int, project: str | None = None, excluded: Sequence[str] = (),
                    batch: int = 5000) -> int:
        _, runs, _ = self._retention_state()
        with self._lock:  # type: ignore[attr-defined]
            gone = []
            for run_id, run in self._runs.items():  # type: ignore[attr-defined]
                us, rest = run_day_project(run)
                if us is None or us >= cutoff_us:
                    continue
                if (project is not None and rest[0] != project) or (project is None and rest[0] in excluded):
                    continue
                gone.append((run_id, us, rest))
                if len(gone) >= batch:
                    break
            for run_id, us, rest in gone:
                del self._runs[run_id]  # type: ignore[attr-defined]
                key = (us // _US_PER_DAY, *rest)
                runs[key] = runs.get(key, 0) + 1
            return len(gone)


class SqlRetention(SideSql):
    """Rollups in tables, for sqlite and postgres. A backend supplies ``_fold_batch``
    (select, subtract from its own totals and delete one batch of records in one
    transaction, calling ``_fold_into`` with the same cursor), ``_fold_runs_batch``,
    ``_side_sql`` and ``_fetch``."""

    supports_retention = True
    def _create_retention_tables(self) -> None:
        for ddl in RETENTION_TABLES:
            self._side_sql(ddl, [])

    def _rq(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        self._retention_tables()
        return self._side(sql, params)

    def _retention_tables(self) -> None:
        if not self.__dict__.get("_ret_tables"):
            self._create_retention_tables()
            self.__dict__["_ret_tables"] = True

    def _fold_into(self, execute: Any, executemany: Any, folded: dict[tuple[Any, ...], dict[str, Any]]) -> None:
        """Add ``folded`` to the rollups through ``execute(sql, params) -> rows`` and
        ``executemany(sql, rows)`` (the caller's transaction): the rollups' present sums
        read 500 keys a statement, the new sums written in one batch (a round trip per
        group cost PostgreSQL 3.5x the fold time)."""
        ph = self._placeholder
        cols = ("k", *_DIM_COLUMNS, *_SUM_COLUMNS, "cost", "cost_nano")
        upsert = (f"INSERT INTO usage_retained ({', '.join(cols)}) VALUES ({', '.join([ph] * len(cols))}) "
                  f"ON CONFLICT (k) DO UPDATE SET "
                  + ", ".join(f"{c} = excluded.{c}" for c in (*_SUM_COLUMNS, "cost", "cost_nano")))
        by_k = {_dumps(list(key)).decode(): key for key in folded}
        order = sorted(by_k)  # one lock order for every writer
        have: dict[str, dict[str, Any]] = {}
        for i in range(0, len(order), 500):
            chunk = order[i:i + 500]
            for row in execute(f"SELECT k, {', '.join(_SUM_COLUMNS)}, cost FROM usage_retained "
                               f"WHERE k IN ({', '.join([ph] * len(chunk))})", chunk):
                t = dict(zip(_SUM_COLUMNS, row[1:-1], strict=True))
                t["cost"] = Decimal(row[-1])
                have[row[0]] = t
        rows = []
        for k in order:
            key, t = by_k[k], folded[by_k[k]]
            if k in have:
                add_totals(have[k], t)
                t = have[k]
            rows.append([k, *key, *(t[c] for c in _SUM_COLUMNS), format(t["cost"], "f"), cost_nano(t["cost"])])
        executemany(upsert, rows)

    def _fold_runs_into(self, execute: Any, counts: dict[tuple[Any, ...], int]) -> None:
        ph = self._placeholder
        for key in sorted(counts, key=lambda k: _dumps(k)):
            execute(f"INSERT INTO runs_retained (k, day, count) VALUES ({ph}, {ph}, {ph}) "
                    "ON CONFLICT (k) DO UPDATE SET count = runs_retained.count + excluded.count",
                    [_dumps(list(key)).decode(), key[0], counts[key]])

    def retained_groups(self, keys: tuple[str, ...], f: Filters) -> dict[tuple[Any, ...], dict[str, Any]]:
        """The rollups matching ``f``, summed by ``keys`` in SQL (integer nano-unit costs);
        groups holding a cost finer than nano-units add their exact text in Python."""
        self._retention_tables()
        ph = self._placeholder
        exprs = ["project" if k == f"tag:{PROJECT_TAG}" else k for k in keys]
        clauses, params = [], []
        for col, value in (("provider", f.provider), ("model", f.model), ("user_id", f.user_id),
                           ("customer_key", f.customer_key)):
            if value is not None:
                clauses.append(f"{col} = {ph}")
                params.append(value)
        for _, v in f.tags:  # retained_fits: only the project tag
            clauses.append(f"project = {ph}")
            params.append(v)
        if f.since is not None:
            clauses.append(f"day >= {ph}")
            params.append(f.since // _US_PER_DAY)
        if f.until is not None:
            clauses.append(f"day < {ph}")
            params.append(f.until // _US_PER_DAY)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(exprs)))}" if exprs else ""
        sums = ", ".join([*(f"SUM({c})" for c in _SUM_COLUMNS), "SUM(cost_nano)",
                          "SUM(CASE WHEN cost_nano IS NULL THEN 1 ELSE 0 END)"])
        rows = self._fetch(f"SELECT {', '.join([*exprs, sums])} FROM usage_retained{where}{group}", params)
        n = len(exprs)
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        inexact = False
        for row in rows:
            if not row[n]:
                continue  # no rollup matched (an aggregate without groups answers one row)
            gk = self._retained_key(keys, row[:n])
            t = dict(zip(_SUM_COLUMNS, (int(v) for v in row[n:n + len(_SUM_COLUMNS)]), strict=True))
            t["cost"] = nano_to_decimal(int(row[-2] or 0))
            inexact = inexact or bool(row[-1])
            out[gk] = t
        if inexact:  # the exact text of the costs beyond nano precision
            extra = " AND " if where else " WHERE "
            for row in self._fetch(f"SELECT {', '.join([*exprs, 'cost'])} FROM usage_retained"
                                      f"{where}{extra}cost_nano IS NULL", params):
                out[self._retained_key(keys, row[:n])]["cost"] += Decimal(row[n])
        return out

    @staticmethod
    def _retained_key(keys: tuple[str, ...], values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(day_key(int(v) * _US_PER_DAY) if k == "day" else v for k, v in zip(keys, values, strict=True))

    def retained_runs(self) -> dict[tuple[Any, ...], int]:
        return {tuple(_loads(k)): n for k, n in self._rq("SELECT k, count FROM runs_retained")}

    def set_retention_mark(self, project: str | None, cutoff_us: int) -> None:
        self._rq("INSERT INTO retention_marks (project, cutoff) VALUES (?, ?) ON CONFLICT (project) "
                 "DO UPDATE SET cutoff = CASE WHEN retention_marks.cutoff > excluded.cutoff "
                 "THEN retention_marks.cutoff ELSE excluded.cutoff END", project or "", cutoff_us)

    def retention_marks(self) -> dict[str, int]:
        self._retention_tables()  # a read outside any write transaction (every /usage asks)
        return {p: int(c) for p, c in self._fetch("SELECT project, cutoff FROM retention_marks", [])}

    def retain(self, cutoff_us: int, project: str | None = None, excluded: Sequence[str] = (),
               batch: int = 5000) -> int:
        self._retention_tables()
        return self._fold_batch(cutoff_us, project, list(excluded), batch)

    def retain_runs(self, cutoff_us: int, project: str | None = None, excluded: Sequence[str] = (),
                    batch: int = 5000) -> int:
        self._retention_tables()
        return self._fold_runs_batch(cutoff_us, project, list(excluded), batch)

    def _fold_batch(self, cutoff_us: int, project: str | None, excluded: list[str], batch: int) -> int:
        raise NotImplementedError

    def _fold_runs_batch(self, cutoff_us: int, project: str | None, excluded: list[str], batch: int) -> int:
        raise NotImplementedError


def raw_since(store: Any, project: str | None) -> int | None:
    """From when (UTC microseconds) the raw records of ``project`` (None: of every
    project) are all kept, or None when retention never ran."""
    if not getattr(store, "supports_retention", False):
        return None
    marks = store.retention_marks()
    if not marks:
        return None
    if project is None:
        return max(marks.values())
    relevant = [marks[p] for p in (project, "") if p in marks]
    return max(relevant) if relevant else None
