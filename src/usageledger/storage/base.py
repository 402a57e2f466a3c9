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
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..records import UsageRecord

__all__ = ["StorageBackend", "GROUP_KEYS", "check_group_by", "Aggregate", "RunWrite", "RUN_RESULTS"]

#: group keys accepted by ``aggregate``, plus ``tag:<key>``
GROUP_KEYS = ("day", "hour", "provider", "model", "user_id", "session_id", "customer_key")

#: one row of ``aggregate``: the group values by key, plus count, token sums and cost
Aggregate = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunWrite:
    """One write of an agent run (seed 001). ``fields`` is a JSON object of RunRecord
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
    keys = tuple(k.strip() for k in group_by.split(",")) if isinstance(group_by, str) else tuple(group_by)
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
        """One row per group: the group keys, ``count``, ``input_tokens``,
        ``output_tokens``, ``cache_read_tokens``, ``cache_write_tokens``,
        ``reasoning_tokens``, ``cost`` (Decimal; records of unknown cost add nothing) and
        ``unknown_cost`` (how many records had no cost). Sorted by the group keys."""
        raise NotImplementedError

    # -- agent runs (seed 001; served by the collector's /api/v1/runs) -----------------------
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
    ) -> list[dict[str, Any]]:
        """Stored runs matching the filters, newest ``started_at`` first."""
        raise NotImplementedError(f"{type(self).__name__} does not store agent runs")

    def count(self) -> int:
        raise NotImplementedError

    def clear(self) -> None:
        """Delete all stored records."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


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
