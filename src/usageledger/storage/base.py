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
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..records import UsageRecord

__all__ = ["StorageBackend", "GROUP_KEYS", "check_group_by", "Aggregate"]

#: group keys accepted by ``aggregate``, plus ``tag:<key>``
GROUP_KEYS = ("day", "hour", "provider", "model", "user_id", "session_id", "customer_key")

#: one row of ``aggregate``: the group values by key, plus count, token sums and cost
Aggregate = dict[str, Any]


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
