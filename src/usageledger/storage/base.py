"""The storage contract, in the shape of huey's BaseStorage: one documented base, flat
backends whose methods are a few lines each.

- :class:`StorageBackend` is the usage contract every backend keeps. Every backend
  stores :class:`~usageledger.records.UsageRecord` exactly once per ``id``: ``save_many``
  returns the ids it newly stored; a second copy of an ``id`` is ignored *in the same
  transaction as the insert* (primary key on ``id``), never through a separate store; it
  keeps cost exact (Decimal in, Decimal out) and timestamps in UTC; it answers ``query``
  newest first, and ``aggregate`` with exact Decimal cost sums per currency.
- :class:`RunStore` is the agent-run contract (served by the collector's
  ``/api/v1/runs``), which a backend opts into by listing it before ``StorageBackend``
  among its bases. Budgets (:mod:`._budgets`) and prices (:mod:`._prices`) are the other
  optional parts, each announced by a ``supports_*`` flag.

What the backends share lives beside this file, one module per idea: :mod:`.filters`
(filter checks, group keys, UTC microsecond timestamps), :mod:`.aggregate` (totals,
grouping, rollup maths), :mod:`.runs` (the ``seq`` rule of run writes) and :mod:`._sql`
(SQL text of the SQL backends). Their names stay importable from here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from ..schema.records import RUN_RESULTS, UsageRecord
from ..schema.totals import total_tokens

# the helpers once defined here: kept importable from this module (backends import them
# from their own modules)
from .aggregate import (  # noqa: F401
    _MAX_NANO,
    DIMENSIONS,
    NANO,
    ROLLUP_KEYS,
    TOTAL_KEYS,
    Aggregate,
    Aggregator,
    DailyPlan,
    _sort_key,
    add_record,
    add_totals,
    cost_nano,
    daily_plan,
    finish_groups,
    group_value,
    merge_groups,
    nano_to_decimal,
    rollup_fits,
    with_none_group,
    zero_totals,
)
from .filters import (  # noqa: F401
    _EPOCH,
    _US_PER_DAY,
    _US_PER_HOUR,
    EQUALITY_KEYS,
    FILTER_KEYS,
    GROUP_KEYS,
    Filters,
    _day_name,
    _hour_name,
    check_group_by,
    check_page,
    day_key,
    from_us,
    hour_key,
    make_filters,
    record_matches,
    ts_us,
)
from .runs import (  # noqa: F401
    RunWrite,
    _json_decode,
    _json_encode,
    apply_run_write,
    page_runs,
    run_fields,
    run_sort_key,
)

__all__ = ["StorageBackend", "RunStore", "GROUP_KEYS", "check_group_by", "Aggregate", "RunWrite",
           "RUN_RESULTS"]


# RUN_RESULTS (what ``write_runs`` answers per write) lives with the other result words in
# usageledger.records; it stays importable from here


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
        ``cache_write_tokens``, ``reasoning_tokens``, the finer counts (``cache_write_1h_tokens``,
        ``input_audio_tokens``, ``output_audio_tokens``, ``input_image_tokens``,
        ``output_image_tokens``: parts of the sums above), ``total_tokens`` (as
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

    # -- agent runs: the RunStore contract; a backend that does not opt in answers
    # NotImplementedError (the collector's 501) -------------------------------------------------
    #: True when the backend keeps agent runs (it derives from :class:`RunStore`)
    supports_runs: bool = False

    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not store agent runs")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        raise NotImplementedError(f"{type(self).__name__} does not store agent runs")

    def query_runs(self, agent_name: str | None = None, status: str | None = None,
                   limit: int | None = None, offset: int = 0,
                   project: str | None = None) -> list[dict[str, Any]]:
        check_page(limit, offset)
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



class RunStore(ABC):
    """The agent-run contract (served by the collector's ``/api/v1/runs``), kept apart
    from the usage contract: a backend opts in with ``class MyStorage(RunStore,
    StorageBackend)`` and implements ``write_runs``, ``get_run`` and ``_query_runs``
    (instantiating it otherwise fails, naming the missing methods). Run merging is written
    once in :mod:`usageledger.storage.runs`."""

    supports_runs: bool = True

    @abstractmethod
    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        """Apply run writes in order, in one transaction; one of :data:`RUN_RESULTS` per
        write: ``created``; ``updated`` (fields merged, ``seq`` advanced); ``duplicate``
        (a create whose ``seq`` is not newer: nothing changed); ``stale`` (an update whose
        ``seq`` is not newer: ignored); ``missing`` (an update of an unknown run)."""

    @abstractmethod
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The stored run (its fields plus ``run_id`` and ``seq``), or None."""

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

    @abstractmethod
    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        """What a backend implements for ``query_runs``: the page is checked already."""


def unique_records(records: Iterable[UsageRecord]) -> dict[str, UsageRecord]:
    """The records by id, the first copy of each id kept; TypeError for anything that is
    not a UsageRecord (before a backend writes any of them)."""
    batch: dict[str, UsageRecord] = {}
    for rec in records:
        if not isinstance(rec, UsageRecord):
            raise TypeError(f"save_many takes UsageRecord objects, got {rec!r}")
        batch.setdefault(rec.id, rec)
    return batch
