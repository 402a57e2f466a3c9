"""SQL text shared by the SQL backends (sqlite, postgres): filters, grouping, keyset pages
and run queries are written once here; a backend passes its placeholder (``?`` or ``%s``)
and keeps only what its dialect does differently (tags, cost sums)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .aggregate import MONTH, DailyPlan
from .filters import _US_PER_DAY, _US_PER_HOUR, Filters, day_key, hour_key

#: the same in every dialect: keyset pages on (ts, id), and the equality filters on the
#: many-valued columns with time. Provider and model have none: a handful of values each,
#: so an index narrows little, and the hourly rollup answers their totals; each index cost
#: 1.5-2.5 µs per stored record on SQLite (batch 1,000, 100,000 rows already stored).
USAGE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts, id)",
    "CREATE INDEX IF NOT EXISTS usage_user ON usage (user_id, ts)",
    "CREATE INDEX IF NOT EXISTS usage_session ON usage (session_id, ts)",
    "CREATE INDEX IF NOT EXISTS usage_customer ON usage (customer_key, ts)",
)
#: indexes an older database has that are no longer kept (dropped at open)
DROPPED_INDEXES = ("DROP INDEX IF EXISTS usage_provider", "DROP INDEX IF EXISTS usage_model")
#: true when daily totals exist without their month rows (a database from before them)
MONTH_ROWS_MISSING = (f"SELECT EXISTS (SELECT 1 FROM usage_daily WHERE dim = '') AND NOT EXISTS "
                      f"(SELECT 1 FROM usage_daily WHERE dim = '{MONTH}')")
RUNS_INDEX = "CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at)"

#: runs newest ``start_time`` first, runs without one last (as ``run_sort_key`` orders them)
_RUNS_ORDER = "ORDER BY started_at IS NOT NULL DESC, started_at DESC, run_id DESC"


def where_sql(clauses: list[str]) -> str:
    """`` WHERE a AND b``, or nothing for no clauses."""
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def filter_clauses(
    f: Filters, ph: str, time_column: str, time_value: Callable[[int], Any]
) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for the equality and time filters (not tags, which each
    dialect stores differently); ``time_value`` turns UTC microseconds into what
    ``time_column`` holds."""
    clauses, params = [], []
    for k, v in f.equalities():
        clauses.append(f"{k} = {ph}")
        params.append(v)
    if f.since is not None:
        clauses.append(f"{time_column} >= {ph}")
        params.append(time_value(f.since))
    if f.until is not None:
        clauses.append(f"{time_column} < {ph}")
        params.append(time_value(f.until))
    return clauses, params


def _hour_of(us: int) -> int:
    return us // _US_PER_HOUR


def rollup_where(f: Filters, ph: str) -> tuple[str, list[Any]]:
    """The WHERE of a query on ``usage_hourly``, for filters that ``rollup_fits``."""
    clauses, params = filter_clauses(f, ph, "hour", _hour_of)
    return where_sql(clauses), params


def daily_sql(keys: tuple[str, ...], plan: DailyPlan, ph: str, sums: str,
              total: bool = False) -> tuple[str, list[Any]]:
    """A query on ``usage_daily`` for ``plan``: the group values (``day``, ``currency`` and
    the dimension's ``value``) and ``sums``. ``total``: the totals of all records (dim ``''``)
    grouped by ``day`` only, from which the group of records without the dimension is
    made (its value is then None). With ``plan.months``, the whole months come from the
    month rows and only the days around them from the day rows."""
    exprs = [k if k in ("day", "currency") else "value" for k in keys if not total or k != plan.dim]
    dim = "" if total else plan.dim
    value = None if total else plan.value
    if plan.months is None:
        parts = [_daily_rows(ph, dim, value, plan.lo_day, plan.hi_day)]
    else:
        start, end = plan.months
        parts = [_daily_rows(ph, MONTH + dim, value, start, end)]
        if plan.lo_day is not None and start is not None and plan.lo_day < start:
            parts.append(_daily_rows(ph, dim, value, plan.lo_day, start))
        if plan.hi_day is not None and end is not None and end < plan.hi_day:
            parts.append(_daily_rows(ph, dim, value, end, plan.hi_day))
    if len(parts) == 1:
        where, params = parts[0]
        source = f"usage_daily{where}"
    else:
        source = "(" + " UNION ALL ".join(f"SELECT * FROM usage_daily{w}" for w, _ in parts) + ") AS d"
        params = [p for _, ps in parts for p in ps]
    sql = f"SELECT {', '.join([*exprs, sums])} FROM {source}"
    return sql + group_by_sql(len(exprs)), params


def _daily_rows(ph: str, dim: str, value: str | None, lo: int | None,
                hi: int | None) -> tuple[str, list[Any]]:
    """The WHERE of one dimension's rows (day or month) between first days [lo, hi)."""
    clauses, params = [f"dim = {ph}"], [dim]
    for clause, param in ((f"value = {ph}", value), (f"day >= {ph}", lo), (f"day < {ph}", hi)):
        if param is not None:
            clauses.append(clause)
            params.append(param)
    return where_sql(clauses), params


def group_by_sql(n: int) -> str:
    """`` GROUP BY 1, 2, ...`` for ``n`` group keys, or nothing."""
    return f" GROUP BY {', '.join(str(i + 1) for i in range(n))}" if n else ""


def group_value(key: str, value: Any) -> Any:
    """A group value as ``aggregate`` answers it: days and hours are selected as whole
    numbers since the epoch and named here."""
    if key == "day":
        return day_key(value * _US_PER_DAY)
    if key == "hour":
        return hour_key(value * _US_PER_HOUR)
    return value


def keyset_pages(
    select: str,
    where: str,
    params: list[Any],
    ph: str,
    batch_size: int,
    fetch: Callable[[str, list[Any]], list[tuple[Any, ...]]],
) -> Iterator[list[tuple[Any, ...]]]:
    """Pages of rows (whose first two columns are ``id, ts``), newest first, each page
    continuing after the last (ts, id) seen, so every page costs the same however deep it
    is (OFFSET would rescan the skipped rows). ``fetch(sql, params)`` runs one query."""
    after: tuple[Any, Any] | None = None
    while True:
        sql, p = select + where, list(params)
        if after is not None:
            sql += (" AND " if where else " WHERE ") + f"(ts, id) < ({ph}, {ph})"
            p += after
        sql += f" ORDER BY ts DESC, id DESC LIMIT {ph}"
        rows = fetch(sql, [*p, batch_size])
        yield rows
        if len(rows) < batch_size:
            return
        after = (rows[-1][1], rows[-1][0])


def runs_query_sql(agent_name: str | None, status: str | None, ph: str,
                   project_sql: str | None = None, project: str | None = None) -> tuple[str, list[Any]]:
    """``SELECT data FROM runs`` with the filters, newest first; the caller appends the
    LIMIT and OFFSET parameters. ``project_sql``: the backend's expression of the run's
    ``project`` field, compared with ``project``."""
    clauses, params = [], []
    if project_sql is not None:
        clauses.append(f"{project_sql} = {ph}")
        params.append(project)
    if agent_name is not None:
        clauses.append(f"agent_name = {ph}")
        params.append(agent_name)
    if status is not None:
        clauses.append(f"status = {ph}")
        params.append(status)
    sql = f"SELECT data FROM runs{where_sql(clauses)} {_RUNS_ORDER} LIMIT {ph} OFFSET {ph}"
    return sql, params


class SideSql:
    """The hooks every SQL side table (budgets, prices, keys, retention) is written against:
    the backend's ``_side_sql`` (one statement in its own transaction, its rows returned),
    ``_fetch`` (a read without a write transaction) and its parameter placeholder."""

    _placeholder = "?"

    def _side_sql(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _side(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """``sql`` written with ``?`` placeholders, run in the backend's own style."""
        return self._side_sql(sql.replace("?", self._placeholder), list(params))
