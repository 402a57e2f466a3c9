"""The StorageBackend contract (in the shape of huey's BaseStorage: one documented base,
flat backends whose methods are a few lines each).

Every backend:
- stores :class:`~usageledger.records.UsageRecord` exactly once per ``id``: ``save_many``
  returns the ids it newly stored; a second copy of an ``id`` is ignored *in the same
  transaction as the insert* (primary key on ``id``), never through a separate store;
- keeps cost exact (Decimal in, Decimal out) and timestamps in UTC;
- answers ``query`` newest first, and ``aggregate`` with exact Decimal cost sums.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import msgspec

from ..records import UsageRecord, to_utc
from ..totals import total_tokens

__all__ = ["StorageBackend", "GROUP_KEYS", "check_group_by", "Aggregate", "RunWrite", "RUN_RESULTS"]

#: group keys accepted by ``aggregate``, plus ``tag:<key>``
GROUP_KEYS = ("day", "hour", "provider", "model", "user_id", "session_id", "customer_key", "currency")

#: one row of ``aggregate``: the group values by key, plus count, token sums and cost
Aggregate = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunWrite:
    """One write of an agent run. ``fields`` is a JSON object of RunRecord
    fields; ``seq`` orders the writes of one run: a write whose ``seq`` is not greater
    than the stored one never replaces newer state (replays and reordering are harmless).

    ``create=True`` (POST): create the run if missing, else apply like an update — so an
    update replayed as an insert is still applied when it is newer.
    ``create=False`` (PATCH): partial update of an existing run; ``missing`` if unknown.
    """

    run_id: str
    fields: dict[str, Any]
    seq: int = 0
    create: bool = True


#: what ``write_runs`` answers per write
RUN_RESULTS = ("created", "updated", "duplicate", "stale", "missing")


def check_group_by(group_by: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(group_by, str):
        keys = tuple(k.strip() for k in group_by.split(",") if k.strip())  # "" means no grouping
    else:
        keys = tuple(group_by)
    for k in keys:
        if k not in GROUP_KEYS and not (k.startswith("tag:") and len(k) > 4):
            raise ValueError(f"group_by key {k!r} is not one of {GROUP_KEYS} or 'tag:<key>'")
    return keys


class StorageBackend:
    """Base contract for usage storage."""

    def save(self, record: UsageRecord) -> bool:
        """Store one record; False when its ``id`` was stored already."""
        return bool(self.save_many([record]))

    def save_many(self, records: Iterable[UsageRecord]) -> set[str]:
        """Store records in one transaction, idempotent on ``id``; returns the ids newly
        stored (the others were duplicates)."""
        raise NotImplementedError

    def query(
        self,
        provider: str | None = None,
        model: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        tags: dict[str, str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        customer_key: str | None = None,
    ) -> list[UsageRecord]:
        """Records matching every given filter, newest first. ``since`` is inclusive,
        ``until`` exclusive; naive datetimes are taken as UTC."""
        check_page(limit, offset)
        f = make_filters(provider=provider, model=model, user_id=user_id, session_id=session_id,
                         since=since, until=until, tags=tags, customer_key=customer_key)
        return self._query(f, limit, offset)

    def _query(self, f: Filters, limit: int | None, offset: int) -> list[UsageRecord]:
        """What a backend implements for ``query``: the filters are checked already."""
        raise NotImplementedError

    def iter_records(self, batch_size: int = 5000, **filters: Any) -> Iterator[UsageRecord]:
        """Stream matching records, newest first, in constant memory."""
        offset = 0
        while True:
            page = self.query(limit=batch_size, offset=offset, **filters)
            yield from page
            if len(page) < batch_size:
                return
            offset += batch_size

    def aggregate(self, group_by: Sequence[str] | str = ("day",), **filters: Any) -> list[Aggregate]:
        """One row per group **and currency** (money is never added across currencies:
        ``currency`` is a group key whether asked for or not, last unless placed): the
        group keys, ``count``, ``input_tokens``, ``output_tokens``, ``cache_read_tokens``,
        ``cache_write_tokens``, ``reasoning_tokens``, ``total_tokens`` (as
        :mod:`usageledger.totals` defines it), ``cost`` (Decimal, in the row's currency;
        records of unknown cost add nothing) and ``unknown_cost`` (how many records had no
        cost). Sorted by the group keys. When nothing matches and no key was asked for: one
        zero row whose ``currency`` is None. :meth:`usageledger.totals.Totals.of_rows`
        sums rows per currency."""
        keys = check_group_by(group_by)
        full, f = (keys if "currency" in keys else (*keys, "currency")), make_filters(**filters)
        rows = self._aggregate(full, f)
        if getattr(self, "supports_retention", False):  # plus the daily rollups of retention
            from ._retention import merge_retained

            rows = merge_retained(self, full, f, rows)
        if not rows and not keys:
            rows = [{"currency": None, **zero_totals()}]
        for r in rows:
            r["total_tokens"] = total_tokens(r["input_tokens"], r["output_tokens"],
                                             r["cache_read_tokens"], r["cache_write_tokens"])
        return rows

    def _aggregate(self, keys: tuple[str, ...], f: Filters) -> list[Aggregate]:
        """What a backend implements for ``aggregate``: keys and filters are checked."""
        raise NotImplementedError

    # -- agent runs (served by the collector's /api/v1/runs) ---------- -----------------------
    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        """Apply run writes in order, in one transaction; one of :data:`RUN_RESULTS` per
        write: ``created``; ``updated`` (fields merged, ``seq`` advanced); ``duplicate``
        (a create whose ``seq`` is not newer: nothing changed); ``stale`` (an update whose
        ``seq`` is not newer: ignored); ``missing`` (an update of an unknown run)."""
        raise NotImplementedError(f"{type(self).__name__} does not store agent runs")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The stored run (its fields plus ``run_id`` and ``seq``), or None."""
        raise NotImplementedError(f"{type(self).__name__} does not store agent runs")

    def query_runs(
        self,
        agent_name: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        project: str | None = None,
    ) -> list[dict[str, Any]]:
        """Stored runs matching the filters, newest ``start_time`` first. ``project``: only
        the runs whose ``project`` field is this (the collector sets it from the key)."""
        check_page(limit, offset)
        if project is not None:
            return self._query_project_runs(project, agent_name, status, limit, offset)
        return self._query_runs(agent_name, status, limit, offset)

    def _query_project_runs(
        self, project: str, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        """``query_runs`` of one project; here by a pass over every matching run (the SQL
        backends filter in the database)."""
        runs = [r for r in self._query_runs(agent_name, status, None, 0) if r.get("project") == project]
        return runs[offset:None if limit is None else offset + limit]

    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} does not store agent runs")

    # -- budgets (optional: memory, sqlite, postgres; see storage/_budgets.py) -------------------
    #: True when the backend keeps budget definitions and alert claims
    supports_budgets: bool = False

    def put_budget(self, name: str, definition: dict[str, Any]) -> None:
        """Create or replace the budget ``name`` (its JSON definition)."""
        raise NotImplementedError(f"{type(self).__name__} does not store budgets")

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Every budget definition by name, sorted by name."""
        raise NotImplementedError(f"{type(self).__name__} does not store budgets")

    def delete_budget(self, name: str) -> bool:
        """Delete a budget and its alert claims; False when there was none."""
        raise NotImplementedError(f"{type(self).__name__} does not store budgets")

    def claim_alert(self, budget: str, window_start: str, threshold: str, delivery: dict[str, Any]) -> bool:
        """Claim the alert ``(budget, window_start, threshold)``: True for the one caller
        (of every process on this store) that inserted it, False if it was claimed before."""
        raise NotImplementedError(f"{type(self).__name__} does not store budgets")

    def alert_queued(self, budget: str, window_start: str, threshold: str) -> None:
        """Mark a claimed alert as handed to its sender's journal."""
        raise NotImplementedError(f"{type(self).__name__} does not store budgets")

    def reclaim_alerts(self, older_than_s: float) -> list[dict[str, Any]]:
        """Take over the claims not queued within ``older_than_s`` (their claimer died
        between claim and queue); returns their deliveries."""
        raise NotImplementedError(f"{type(self).__name__} does not store budgets")

    def count(self) -> int:
        raise NotImplementedError

    def clear(self) -> None:
        """Delete all stored records."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


def unique_records(records: Iterable[UsageRecord]) -> dict[str, UsageRecord]:
    """The records by id, the first copy of each id kept; TypeError for anything that is
    not a UsageRecord (before a backend writes any of them)."""
    batch: dict[str, UsageRecord] = {}
    for rec in records:
        if not isinstance(rec, UsageRecord):
            raise TypeError(f"save_many takes UsageRecord objects, got {rec!r}")
        batch.setdefault(rec.id, rec)
    return batch


def zero_totals() -> dict[str, Any]:
    return {
        "count": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost": Decimal(0),
        "unknown_cost": 0,
    }


# -- shared helpers for backends (one implementation of filters, groups and run merges) ---------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 86_400_000_000
#: cost is also kept as an integer number of nano-units wherever it fits exactly, so sums
#: run in integer arithmetic inside the database; other costs are summed from their text
NANO = Decimal("1e-9")
_json_encode = msgspec.json.Encoder(decimal_format="string").encode
_json_decode = msgspec.json.decode
_MAX_NANO = 2**63 - 1

FILTER_KEYS = ("provider", "model", "user_id", "session_id", "customer_key", "since", "until", "tags")
EQUALITY_KEYS = ("provider", "model", "user_id", "session_id", "customer_key")
TOTAL_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "reasoning_tokens")


def ts_us(value: datetime) -> int:
    """Microseconds since the epoch, UTC (naive datetimes are taken as UTC)."""
    if value.__class__ is not datetime and not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {value!r}")
    if value.tzinfo is not UTC:
        value = to_utc(value)
    d = value - _EPOCH  # integer arithmetic on the parts: exact, and cheaper than // timedelta
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def day_key(us: int) -> str:
    """``YYYY-MM-DD`` of a UTC microsecond timestamp."""
    return _day_name(us // _US_PER_DAY)


def hour_key(us: int) -> str:
    """``YYYY-MM-DDTHH:00Z`` of a UTC microsecond timestamp."""
    return _hour_name(us // _US_PER_HOUR)


# aggregates name the same few thousand days and hours over and over: format each once
@lru_cache(maxsize=1 << 16)
def _day_name(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")


@lru_cache(maxsize=1 << 18)
def _hour_name(hour: int) -> str:
    return (_EPOCH + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:00Z")


def cost_nano(cost: Decimal | None) -> int | None:
    """The cost in integer nano-units when that is exact and fits 64 bits, else None (the
    caller then keeps and sums the exact text: nothing is ever rounded)."""
    if cost is None:
        return None
    scaled = cost.scaleb(9)
    if scaled != scaled.to_integral_value():
        return None
    n = int(scaled)
    return n if n <= _MAX_NANO else None


def nano_to_decimal(n: int) -> Decimal:
    """Exact, and written without exponent or trailing zeros (``0.0015``, ``3``)."""
    whole, frac = divmod(n, 1_000_000_000)
    if frac == 0:
        return Decimal(whole)
    return Decimal(format(Decimal(n).scaleb(-9), "f").rstrip("0"))


@dataclass(frozen=True, slots=True)
class Filters:
    """Validated query filters; ``since``/``until`` in UTC microseconds."""

    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    customer_key: str | None = None
    since: int | None = None
    until: int | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def equalities(self) -> list[tuple[str, str]]:
        return [(k, getattr(self, k)) for k in EQUALITY_KEYS if getattr(self, k) is not None]


def make_filters(**filters: Any) -> Filters:
    """Check filter names and types (TypeError/ValueError naming the filter)."""
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise TypeError(f"unknown filter(s) {sorted(unknown)}; valid filters: {FILTER_KEYS}")
    values: dict[str, Any] = {}
    for k in EQUALITY_KEYS:
        v = filters.get(k)
        if v is not None and not isinstance(v, str):
            raise TypeError(f"filter {k} must be a string, got {v!r}")
        values[k] = v
    for k in ("since", "until"):
        v = filters.get(k)
        if v is not None:
            if not isinstance(v, datetime):
                raise TypeError(f"filter {k} must be a datetime, got {v!r}")
            values[k] = ts_us(v)
    tags = filters.get("tags")
    if tags:
        if not isinstance(tags, dict):
            raise TypeError(f"filter tags must be a dict of str to str, got {tags!r}")
        for k, v in tags.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"filter tags must map str to str, got {k!r}: {v!r}")
        values["tags"] = tuple(sorted(tags.items()))
    return Filters(**values)


def check_page(limit: int | None, offset: int) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


#: group keys an hourly rollup (hour x provider x model x currency) can answer
ROLLUP_KEYS = frozenset({"day", "hour", "provider", "model", "currency"})


def rollup_fits(keys: tuple[str, ...], f: Filters) -> bool:
    """Whether an hourly rollup answers this aggregate exactly: groups among day, hour,
    provider, model; filters only provider, model and hour-aligned time bounds."""
    return (
        set(keys) <= ROLLUP_KEYS
        and f.user_id is None
        and f.session_id is None
        and f.customer_key is None
        and not f.tags
        and (f.since is None or f.since % _US_PER_HOUR == 0)
        and (f.until is None or f.until % _US_PER_HOUR == 0)
    )


#: dimensions kept in the daily per-dimension totals (plus every ``tag:<key>``)
DIMENSIONS = ("user_id", "customer_key", "session_id")


@dataclass(frozen=True, slots=True)
class DailyPlan:
    """How an aggregate is answered from the daily totals per dimension (``usage_daily``):
    rows ``dim`` (``user_id``, ``customer_key``, ``session_id`` or ``tag:<key>``; ``""``
    holds the total of all records) and ``value``, for whole UTC days ``lo_day`` (inclusive)
    to ``hi_day`` (exclusive); ``edges`` are the parts of the time range that do not cover a
    whole day, read from the records (at most two partial days, through the ``ts`` index).
    ``value``: a filter on the dimension; ``grouped``: the dimension is a group key and not
    filtered (records without it then form the None group: the total minus the others)."""

    dim: str
    value: str | None
    grouped: bool
    lo_day: int | None
    hi_day: int | None
    edges: tuple[Filters, ...]


def daily_plan(keys: tuple[str, ...], f: Filters) -> DailyPlan | None:
    """A :class:`DailyPlan` when the daily totals answer this aggregate exactly: one
    dimension (user, customer, session or one tag key) as a group key and/or an equality
    filter, optionally with ``day``; no provider or model filter; any time range."""
    if f.provider is not None or f.model is not None or len(f.tags) > 1:
        return None
    dims = {k for k in keys if k in DIMENSIONS or k.startswith("tag:")}
    values = {k: getattr(f, k) for k in DIMENSIONS if getattr(f, k) is not None}
    values.update({f"tag:{k}": v for k, v in f.tags})
    dims |= set(values)
    if len(dims) != 1 or not set(keys) <= dims | {"day", "currency"}:
        return None
    (dim,) = dims
    lo = None if f.since is None else -(-f.since // _US_PER_DAY)
    hi = None if f.until is None else f.until // _US_PER_DAY
    if lo is not None and hi is not None and lo >= hi:
        return None  # no whole day inside: the records of under two days, by the ts index
    edges = []
    if f.since is not None and f.since < lo * _US_PER_DAY:
        edges.append(replace(f, until=lo * _US_PER_DAY))
    if f.until is not None and hi * _US_PER_DAY < f.until:
        edges.append(replace(f, since=hi * _US_PER_DAY))
    value = values.get(dim)
    return DailyPlan(dim, value, dim in keys and value is None, lo, hi, tuple(edges))


def add_totals(t: dict[str, Any], other: dict[str, Any], sign: int = 1) -> None:
    """``t += other`` (or ``-=`` with ``sign=-1``) for totals dicts as :func:`zero_totals`
    makes."""
    for name, value in other.items():
        if name in t:
            t[name] += value if sign > 0 else -value


def with_none_group(keys: tuple[str, ...], dim: str, groups: dict[tuple[Any, ...], dict[str, Any]],
                    totals: dict[tuple[Any, ...], dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """``groups`` (by the dimension ``dim`` and maybe ``day``) plus the group of records
    without the dimension: ``totals`` (all records, by the other keys) minus the other
    groups. Exact: integer and Decimal sums."""
    i = keys.index(dim)
    rest = {gk[:i] + (None,) + gk[i:]: dict(t) for gk, t in totals.items()}
    for gk, t in groups.items():
        r = rest.get(gk[:i] + (None,) + gk[i + 1:])
        if r is not None:
            add_totals(r, t, -1)
    for gk, r in rest.items():
        if r["count"]:
            groups[gk] = r
    return groups


def merge_groups(into: dict[tuple[Any, ...], dict[str, Any]],
                 groups: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    """Add each group's totals into ``into`` (groups absent there are added)."""
    for gk, t in groups.items():
        have = into.get(gk)
        if have is None:
            into[gk] = t
        else:
            add_totals(have, t)


def record_matches(rec: UsageRecord, f: Filters, us: int) -> bool:
    """Whether ``rec`` (whose timestamp is ``us``) passes every filter."""
    if f.provider is not None and rec.provider != f.provider:
        return False
    if f.model is not None and rec.model != f.model:
        return False
    if f.user_id is not None and rec.user_id != f.user_id:
        return False
    if f.session_id is not None and rec.session_id != f.session_id:
        return False
    if f.customer_key is not None and rec.customer_key != f.customer_key:
        return False
    if f.since is not None and us < f.since:
        return False
    if f.until is not None and us >= f.until:
        return False
    if f.tags:
        tags = rec.tags
        for k, v in f.tags:
            if tags.get(k) != v:
                return False
    return True


def group_value(rec: UsageRecord, key: str, us: int) -> str | None:
    if key == "day":
        return day_key(us)
    if key == "hour":
        return hour_key(us)
    if key.startswith("tag:"):
        return rec.tags.get(key[4:])
    return getattr(rec, key)


def _sort_key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is not None, v) for v in values)


class Aggregator:
    """Accumulates records into groups (used by the backends that aggregate in Python)."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.groups: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, rec: UsageRecord, us: int) -> None:
        gk = tuple(group_value(rec, k, us) for k in self.keys)
        t = self.groups.get(gk)
        if t is None:
            t = self.groups[gk] = zero_totals()
        add_record(t, rec)

    def rows_from_hourly(
        self, hourly: Iterable[tuple[tuple[int, str, str, str], dict[str, Any]]], f: Filters
    ) -> list[Aggregate]:
        """Rows from totals per (hour, provider, model, currency), for aggregates that
        :func:`rollup_fits`."""
        lo = None if f.since is None else f.since // _US_PER_HOUR
        hi = None if f.until is None else f.until // _US_PER_HOUR
        for (hour, provider, model, currency), totals in hourly:
            if (lo is not None and hour < lo) or (hi is not None and hour >= hi):
                continue
            if (f.provider is not None and provider != f.provider) or (
                f.model is not None and model != f.model
            ):
                continue
            values = {"provider": provider, "model": model, "currency": currency}
            gk = tuple(
                values[k] if k in values
                else day_key(hour * _US_PER_HOUR) if k == "day" else hour_key(hour * _US_PER_HOUR)
                for k in self.keys
            )
            t = self.groups.get(gk)
            if t is None:
                t = self.groups[gk] = zero_totals()
            for name, value in totals.items():
                t[name] += value
        return self.rows()

    def rows(self) -> list[Aggregate]:
        return finish_groups(self.keys, self.groups)


def add_record(t: dict[str, Any], rec: UsageRecord) -> None:
    """Add one record to a totals dict (as :func:`zero_totals` makes)."""
    t["count"] += 1
    t["input_tokens"] += rec.input_tokens
    t["output_tokens"] += rec.output_tokens
    t["cache_read_tokens"] += rec.cache_read_tokens
    t["cache_write_tokens"] += rec.cache_write_tokens
    t["reasoning_tokens"] += rec.reasoning_tokens
    if rec.cost is None:
        t["unknown_cost"] += 1
    else:
        t["cost"] += rec.cost


def finish_groups(keys: tuple[str, ...], groups: dict[tuple[Any, ...], dict[str, Any]]) -> list[Aggregate]:
    """Rows sorted by group values (None first); with no group keys, exactly one row."""
    if not keys:
        return [{**groups.get((), zero_totals())}]
    return [
        {**dict(zip(keys, gk, strict=True)), **groups[gk]}
        for gk in sorted(groups, key=_sort_key)
    ]


def run_fields(write: RunWrite) -> dict[str, Any]:
    """A write's fields without the bookkeeping keys the store owns."""
    if not isinstance(write.fields, dict):
        raise TypeError(f"RunWrite.fields must be a dict, got {write.fields!r}")
    if isinstance(write.seq, bool) or not isinstance(write.seq, int):
        raise TypeError(f"RunWrite.seq must be an integer, got {write.seq!r}")
    if not isinstance(write.run_id, str) or not write.run_id:
        raise ValueError(f"RunWrite.run_id must be a non-empty string, got {write.run_id!r}")
    fields = {k: v for k, v in write.fields.items() if k not in ("run_id", "seq")}
    # one JSON round trip: every backend then stores and returns the same values
    # (datetimes as ISO strings, Decimals as strings), whatever the caller passed
    try:
        return _json_decode(_json_encode(fields))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"RunWrite.fields of run {write.run_id!r} is not JSON: {exc}") from None


def apply_run_write(stored: dict[str, Any] | None, write: RunWrite) -> tuple[str, dict[str, Any] | None]:
    """The outcome of ``write`` on ``stored`` (a run as ``get_run`` returns it), and the new
    stored run, or None when nothing changes."""
    fields = run_fields(write)
    if stored is None:
        if not write.create:
            return "missing", None
        return "created", {**fields, "run_id": write.run_id, "seq": write.seq}
    if write.seq <= stored["seq"]:
        return ("duplicate" if write.create else "stale"), None
    return "updated", {**stored, **fields, "run_id": write.run_id, "seq": write.seq}


def page_runs(
    runs: Iterable[dict[str, Any]],
    agent_name: str | None,
    status: str | None,
    limit: int | None,
    offset: int,
) -> list[dict[str, Any]]:
    """``query_runs`` for the backends that filter in Python: the runs matching
    ``agent_name`` and ``status``, newest ``start_time`` first, one page."""
    selected = [
        r for r in runs
        if (agent_name is None or r.get("agent_name") == agent_name)
        and (status is None or r.get("status") == status)
    ]
    selected.sort(key=run_sort_key, reverse=True)
    return selected[offset:None if limit is None else offset + limit]


def run_sort_key(run: dict[str, Any]) -> tuple[bool, str, str]:
    """Sorted with ``reverse=True``: newest ``start_time`` first (ISO strings order as
    times), runs without it last, ties by ``run_id`` descending."""
    started = run.get("start_time")
    return (started is not None, "" if started is None else str(started), run["run_id"])
