"""The collector's ingestion rules, free of HTTP: :class:`Collector`.

The FastAPI routes of :mod:`usageledger.server.app` read and decode a request, call one
method here and encode its answer; ``usageledger import`` calls :meth:`Collector.ingest`
too, so a record loaded from a file is priced and counted exactly like a posted one.

What lives here (and nowhere else):

- dedup accounting: the storage stores each ``id`` once (in the insert's transaction);
  the first copy of a newly stored id in a batch is ``accepted``, every other copy
  ``duplicate`` (:func:`track_answer`);
- pricing of records sent without a cost (overrides and aliases kept in the storage,
  then the offline price tables: :class:`usageledger.pricebook.PriceBook`);
- the answer to a batch: compact counts when nothing was refused, else one result per
  item in order;
- agent-run writes: ``seq`` handling for writes that carry none (on top of what is stored
  or written earlier in the batch) and the retries of a seq-less update racing other
  writers.

This module imports no web framework, so the command line can use it without the
``server`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..prices.pricebook import PriceBook
from ..schema.records import ACCEPTED, DUPLICATE, MISSING, REJECTED, STALE, UsageRecord
from ..storage.base import RunWrite, StorageBackend
from .wire import Refused, RunItem, decode_track

__all__ = ["Collector", "track_answer", "PATCH_ATTEMPTS"]

#: attempts of a seq-less PATCH racing other writers of the same run
PATCH_ATTEMPTS = 5


def _direct(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return fn(*args, **kw)


class Collector:
    """Ingestion over one storage.

    ``price``: records without a cost are priced from ``prices`` (by default a
    :class:`PriceBook` over ``store``: the storage's overrides and aliases, then the
    offline tables). ``metrics``: an object with ``received``/``accepted``/``rejected``/
    ``duplicates`` counters and a ``run_writes`` counter by status (the app's Prometheus
    metrics), or None. ``on_stored(records, new_ids)``: called after each batch with the
    records and the ids newly stored (the budget alerts). ``call(fn, *args)`` runs every
    storage call (the app maps a storage's failures to HTTP answers there)."""

    def __init__(
        self,
        store: StorageBackend,
        *,
        price: bool = True,
        prices: PriceBook | None = None,
        metrics: Any = None,
        on_stored: Callable[[Sequence[UsageRecord], set[str]], None] | None = None,
        call: Callable[..., Any] | None = None,
    ):
        if not isinstance(store, StorageBackend):
            raise TypeError(f"store must be a StorageBackend, got {store!r}")
        self.store = store
        self.prices = prices if prices is not None else PriceBook(store)
        self.price = price
        self.metrics = metrics
        self.on_stored = on_stored
        self.call = call or _direct

    # -- usage records ---------------------------------------------------------------------
    def ingest_body(self, data: bytes) -> dict[str, Any]:
        """A ``/track`` body (decoded JSON bytes) stored: the answer of :func:`track_answer`."""
        return self.ingest(decode_track(data))

    def ingest(self, items: Sequence[UsageRecord | Refused]) -> dict[str, Any]:
        """Store the valid items of a batch (records without a cost priced first); the
        answer of :func:`track_answer`. Refused items (failed validation) are only
        counted and answered."""
        records = [it for it in items if type(it) is UsageRecord]
        if self.price:
            # copies of one id are stored once by save_many (and priced twice: harmless)
            records = self.prices.price_many(records)
        new = self.call(self.store.save_many, records) if records else set()
        if self.on_stored is not None:
            self.on_stored(records, new)
        answer = track_answer(items, new)
        m = self.metrics
        if m is not None:
            m.received.inc(len(items))
            m.accepted.inc(answer[ACCEPTED])
            m.rejected.inc(answer.get(REJECTED, 0))
            m.duplicates.inc(answer[DUPLICATE])
        return answer

    def ingest_records(self, records: Iterable[UsageRecord], batch: int = 5000) -> tuple[int, int]:
        """Store ``records`` ``batch`` at a time through :meth:`ingest` (``usageledger
        import``): ``(read, newly stored)``."""
        read = stored = 0
        chunk: list[UsageRecord] = []
        for rec in records:
            chunk.append(rec)
            if len(chunk) >= batch:
                stored += self.ingest(chunk)[ACCEPTED]
                read += len(chunk)
                chunk = []
        if chunk:
            stored += self.ingest(chunk)[ACCEPTED]
            read += len(chunk)
        return read, stored

    # -- agent runs --------------------------------------------------------------------------
    def write_runs(self, writes: list[RunWrite]) -> list[str]:
        """Apply run writes in order; one status per write (``storage.base.RUN_RESULTS``)."""
        out = self.call(self.store.write_runs, writes)
        if self.metrics is not None:
            for status in out:
                self.metrics.run_writes.labels(status).inc()
        return out

    def stored_seq(self, run_id: str) -> int | None:
        run = self.call(self.store.get_run, run_id)
        return None if run is None else int(run["seq"])

    def create_run(self, run_id: str, seq: int | None, fields: dict[str, Any]) -> str:
        """``POST /runs``: create (or, when newer, update) a run; its status."""
        return self.write_runs([RunWrite(run_id, fields, seq or 0, True)])[0]

    def patch_run(self, run_id: str, seq: int | None, fields: dict[str, Any]) -> str:
        """``PATCH /runs/{id}``: a write without ``seq`` goes on top of the stored one,
        retried while other writers move the run on meanwhile (``stale``)."""
        if seq is not None:
            return self.write_runs([RunWrite(run_id, fields, seq, create=False)])[0]
        for _ in range(PATCH_ATTEMPTS):
            current = self.stored_seq(run_id)
            if current is None:
                return MISSING
            status = self.write_runs([RunWrite(run_id, fields, current + 1, create=False)])[0]
            if status != STALE:
                return status
        return STALE

    def apply_runs(self, items: list[RunItem]) -> list[dict[str, Any]]:
        """``POST /runs/batch``: one result per item, in order."""
        # a write without seq goes on top of what is stored (or written earlier in the batch)
        latest: dict[str, int] = {}
        writes, where = [], []
        for i, it in enumerate(items):
            if it.error is not None:
                continue
            seq = it.seq
            if seq is None:
                if it.create:
                    seq = 0
                else:
                    base = latest.get(it.run_id)
                    if base is None:
                        base = self.stored_seq(it.run_id)
                    seq = 0 if base is None else base + 1
            latest[it.run_id] = max(seq, latest.get(it.run_id, seq))
            writes.append(it.write(seq))
            where.append(i)
        statuses = self.write_runs(writes) if writes else []
        done = dict(zip(where, statuses, strict=True))
        out = []
        for i, it in enumerate(items):
            if it.error is not None:
                out.append({"id": it.id, "run_id": it.run_id, "status": REJECTED, "error": it.error})
            else:
                out.append({"id": it.id, "run_id": it.run_id, "status": done[i]})
        return out


def track_answer(items: Sequence[UsageRecord | Refused], new: set[str]) -> dict[str, Any]:
    """The answer to a ``/track`` batch whose newly stored ids are ``new``: compact
    (counts, and the ids of the duplicates) when no item was refused, else one result per
    item in order. The first copy of a new id is ``accepted``, any later copy ``duplicate``."""
    n = len(items)
    if len(new) == n:  # the common case: every item a new record
        return {ACCEPTED: n, DUPLICATE: 0, "duplicate_ids": []}
    fresh = set(new)
    if not any(type(it) is Refused for it in items):
        duplicates = []
        for it in items:
            if it.id in fresh:
                fresh.discard(it.id)
            else:
                duplicates.append(it.id)
        return {ACCEPTED: n - len(duplicates), DUPLICATE: len(duplicates),
                "duplicate_ids": duplicates}
    results: list[dict[str, Any]] = []
    accepted = rejected = 0
    for it in items:
        if type(it) is Refused:
            rejected += 1
            results.append({"id": it.id, "status": REJECTED, "error": it.error})
        elif it.id in fresh:
            fresh.discard(it.id)
            accepted += 1
            results.append({"id": it.id, "status": ACCEPTED})
        else:
            results.append({"id": it.id, "status": DUPLICATE})
    return {ACCEPTED: accepted, DUPLICATE: n - accepted - rejected, REJECTED: rejected,
            "results": results}
