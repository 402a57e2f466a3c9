"""SummarySink: the daily-summary JSON file as a pipeline destination.

A thin adapter: ``send(batch)`` decodes the usage records of a batch and counts them with
:meth:`SummaryStore.apply <usageledger.summary_store.SummaryStore.apply>` in one write;
every record gets Ok when the write succeeded (or the records were counted before), Retry
with the reason when no location took it, and an item that is no usage record gets
Reject. No loops, no sleeps: the dispatcher owns retry and backoff. The file's document
lives in :mod:`usageledger.summary_file`, its storage (locations, atomic writes, recovery,
cross-process locking) in :mod:`usageledger.summary_store`; their names stay importable
from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.sink import OK, Result, Retry, Sink, decode_batch
from ..schema.records import KIND_USAGE, UsageRecord, decode_usage
from ..summary.document import (
    FORMAT,
    VERSION,
    CorruptSummary,
    Days,
    Entry,
    NewerSummary,
    SummaryDoc,
    add_entries,
    apply_records,
    day_of,
    decode_doc,
    encode_doc,
    entry_of,
    merge_days,
    new_doc,
)
from ..summary.store import TIERS, Location, Snapshot, SummaryStore, default_locations

if TYPE_CHECKING:
    from ..core.journal.base import JournalItem

__all__ = [
    "SummarySink", "SummaryStore", "Snapshot", "SummaryDoc", "Entry", "Location", "FORMAT",
    "VERSION", "TIERS",
    # the file model's helpers, importable from here as before
    "Days", "CorruptSummary", "NewerSummary", "decode_doc", "encode_doc", "new_doc",
    "merge_days", "add_entries", "entry_of", "day_of", "apply_records", "default_locations",
]


class SummarySink(Sink):
    """A Sink counting usage records into a daily-summary file.

    Takes the :class:`~usageledger.summary_store.SummaryStore` keywords (``backup_dir``,
    ``emergency_dir``, ``price``, ``on_applied``, ``dedup_window``) and builds the store,
    or shares one given as ``store=`` (then ``path`` may be omitted)."""

    name = "summary"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        store: SummaryStore | None = None,
        backup_dir: str | os.PathLike[str] | None = None,
        emergency_dir: str | os.PathLike[str] | None = None,
        price: Callable[[UsageRecord], UsageRecord] | None = None,
        on_applied: Callable[[Iterable[str]], None] | None = None,
        dedup_window: int = 10_000,
    ):
        if store is None:
            if path is None:
                raise TypeError("SummarySink needs the summary file's path or a store=")
            store = SummaryStore(path, backup_dir=backup_dir, emergency_dir=emergency_dir,
                                 price=price, on_applied=on_applied, dedup_window=dedup_window)
        elif path is not None and Path(path).expanduser().absolute() != store.path:
            raise ValueError(f"path {path!r} is not the store's file {store.path}")
        self.store = store
        self.rejected = 0

    @property
    def destination(self) -> str:
        return f"summary file {self.store.path}"

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        decoded, results = decode_batch(
            batch, KIND_USAGE, decode_usage, taker="a summary sink", noun="usage record"
        )
        self.rejected += len(results)
        records = [r for _, r in decoded]
        if records:
            error = self.store.apply(records)
            verdict: Result = OK if error is None else Retry(None, error)
            for r in records:
                results[r.id] = verdict
        return results

    def close(self) -> None:
        """Write the snapshot once more (see :meth:`SummaryStore.close`)."""
        self.store.close()

    # -- the store's names, as this sink had them ----------------------------------------------
    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def locations(self) -> list[Location]:
        return self.store.locations

    def apply(self, records: list[UsageRecord]) -> str | None:
        """:meth:`SummaryStore.apply`."""
        return self.store.apply(records)

    def days(self) -> Days:
        """The file's days, every lineage added up (:meth:`SummaryStore.snapshot`)."""
        return self.store.snapshot().days()

    def after_fork_child(self) -> None:
        self.store.after_fork_child()

    def stats(self) -> dict[str, Any]:
        """The store's counters plus ``rejected``: journal items that were no usage record."""
        return {**self.store.stats(), "rejected": self.rejected}
