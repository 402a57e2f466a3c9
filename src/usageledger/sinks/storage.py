"""StorageSink: write batches of usage records into any StorageBackend."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.sink import OK, Result, Retry, Sink, decode_batch, describe_url
from ..schema.records import KIND_USAGE, UsageRecord, decode_usage

if TYPE_CHECKING:
    from ..core.journal.base import JournalItem
    from ..storage.base import StorageBackend

log = logging.getLogger("usageledger.sinks.storage")


class StorageSink(Sink):
    """``save_many`` is idempotent on id, so a redelivered batch is harmless; a record
    that cannot be decoded is rejected alone, a backend failure retries the batch."""

    name = "storage"

    def __init__(
        self,
        storage: StorageBackend,
        *,
        price: Callable[[UsageRecord], UsageRecord] | None = None,
        on_stored: Callable[[list[UsageRecord]], None] | None = None,
    ):
        self.storage = storage
        self._price = price
        #: called with the records a batch newly stored (a Meter's budget alerts)
        self.on_stored = on_stored

    @property
    def destination(self) -> str | None:
        st = self.storage
        kind = type(st).__name__
        where = getattr(st, "db_path", None) or getattr(st, "path", None)
        if where is not None:
            return f"storage {kind} {os.path.abspath(os.fspath(where))}"
        url = getattr(st, "url", None)
        if isinstance(url, str):
            prefix = getattr(st, "prefix", None)
            return f"storage {kind} {describe_url(url)}" + (f" prefix {prefix}" if prefix else "")
        return None  # a backend with no location we know (memory, a user's own class)

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        decoded, results = decode_batch(
            batch, KIND_USAGE, decode_usage, taker="a storage sink", noun="usage record"
        )
        records: list[UsageRecord] = []
        for _, record in decoded:
            if record.cost is None and self._price is not None:
                record = self._price(record)
            records.append(record)
        if records:
            try:
                new = self.storage.save_many(records)
            except Exception as exc:
                log.warning("storage refused %d records: %r", len(records), exc)
                retry = Retry(None, f"{type(exc).__name__}: {exc}")
                return {**results, **{r.id: retry for r in records}}
            for r in records:
                results[r.id] = OK
            if self.on_stored is not None and new:
                try:
                    self.on_stored([r for r in records if r.id in new])
                except Exception:  # the records are stored: never retry them for this
                    log.exception("the on_stored hook failed")
        return results

    def close(self) -> None:
        pass
