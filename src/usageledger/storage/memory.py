"""In-memory storage: for tests and short scripts (nothing survives the process)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import msgspec

from ..schema.records import UsageRecord
from ._budgets import MemoryBudgets
from ._keys import MemoryKeys
from ._prices import MemoryPrices
from ._retention import MemoryRetention
from .aggregate import Aggregate, Aggregator, add_record, add_totals, rollup_fits, zero_totals
from .base import RunStore, RunWrite, StorageBackend
from .filters import _US_PER_HOUR, Filters, make_filters, record_matches, ts_us
from .runs import apply_run_write, page_runs

__all__ = ["MemoryStorage"]


class MemoryStorage(MemoryBudgets, MemoryPrices, MemoryKeys, MemoryRetention, RunStore, StorageBackend):
    """Records in a dict by id plus a list kept sorted by (timestamp, id) on demand;
    thread-safe. Also the in-memory engine of :class:`~usageledger.storage.jsonl.JsonlStorage`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_id: dict[str, UsageRecord] = {}
        # (timestamp us, id, record); sorted lazily because inserts mostly arrive in order
        self._rows: list[tuple[int, str, UsageRecord]] = []
        self._sorted = True
        self._runs: dict[str, dict[str, Any]] = {}
        # totals per (hour, provider, model, currency): aggregates that fit read these
        self._hourly: dict[tuple[int, str, str, str], dict[str, Any]] = {}

    # -- usage ------------------------------------------------------------------------------
    def _add(self, records: Iterable[UsageRecord]) -> list[UsageRecord]:
        """Insert the records whose id is new (lock held); returns them."""
        new: list[UsageRecord] = []
        by_id, rows = self._by_id, self._rows
        last = rows[-1][:2] if rows else None
        for rec in records:
            if not isinstance(rec, UsageRecord):
                raise TypeError(f"save_many takes UsageRecord objects, got {rec!r}")
            if rec.id in by_id:
                continue
            by_id[rec.id] = rec
            key = (ts_us(rec.timestamp), rec.id)
            if last is not None and key < last:
                self._sorted = False
            last = key
            rows.append((key[0], key[1], rec))
            new.append(rec)
            hk = (key[0] // _US_PER_HOUR, rec.provider, rec.model, rec.currency)
            t = self._hourly.get(hk)
            if t is None:
                t = self._hourly[hk] = zero_totals()
            add_record(t, rec)
        return new

    def save_many(self, records: Iterable[UsageRecord]) -> set[str]:
        with self._lock:
            return {r.id for r in self._add(records)}

    def replace_costs(self, records: Sequence[UsageRecord]) -> int:
        """Store the cost and currency of ``records`` on the stored records of the same id
        (the totals follow); returns how many were stored (unknown ids are skipped)."""
        with self._lock:
            changed = {r.id: r for r in records if r.id in self._by_id}
            if not changed:
                return 0
            for i, (us, id_, old) in enumerate(self._rows):
                new = changed.get(id_)
                if new is None:
                    continue
                new = msgspec.structs.replace(old, cost=new.cost, currency=new.currency)
                ok = (us // _US_PER_HOUR, old.provider, old.model, old.currency)
                t = self._hourly[ok]
                one = zero_totals()
                add_record(one, old)
                add_totals(t, one, -1)
                if not t["count"]:
                    del self._hourly[ok]
                # the rollup is keyed by currency: a repriced record may change bucket
                hk = (us // _US_PER_HOUR, new.provider, new.model, new.currency)
                add_record(self._hourly.setdefault(hk, zero_totals()), new)
                self._rows[i] = (us, id_, new)
                self._by_id[id_] = new
            return len(changed)

    def _forget_records(self, gone: Sequence[tuple[int, str, UsageRecord]]) -> None:
        """Delete these rows (lock held), their totals leaving the hourly rollup."""
        ids = {id_ for _, id_, _ in gone}
        for us, id_, rec in gone:
            del self._by_id[id_]
            hk = (us // _US_PER_HOUR, rec.provider, rec.model, rec.currency)
            one = zero_totals()
            add_record(one, rec)
            add_totals(self._hourly[hk], one, -1)
            if not self._hourly[hk]["count"]:
                del self._hourly[hk]
        self._rows = [row for row in self._rows if row[1] not in ids]

    def _newest_first(self) -> Iterable[tuple[int, str, UsageRecord]]:
        if not self._sorted:
            self._rows.sort(key=lambda row: (row[0], row[1]))
            self._sorted = True
        return reversed(self._rows)

    def _matching(self, f: Filters) -> Iterable[tuple[int, UsageRecord]]:
        rows = self._newest_first()
        if f == Filters():
            return ((us, rec) for us, _, rec in rows)
        return ((us, rec) for us, _, rec in rows if record_matches(rec, f, us))

    def _query(self, f: Filters, limit: int | None, offset: int) -> list[UsageRecord]:
        with self._lock:
            hits = (rec for _, rec in self._matching(f))
            stop = None if limit is None else offset + limit
            return list(islice(hits, offset, stop))

    def iter_records(self, batch_size: int = 5000, **filters: Any) -> Iterator[UsageRecord]:
        """The matching records (references to the stored objects) taken under the lock
        once, so deep pages cost nothing extra and writers are not held up."""
        f = make_filters(**filters)
        with self._lock:
            hits = [rec for _, rec in self._matching(f)]
        yield from hits

    def _aggregate(self, keys: tuple[str, ...], f: Filters) -> list[Aggregate]:
        agg = Aggregator(keys)
        with self._lock:
            if rollup_fits(keys, f):
                return agg.rows_from_hourly(self._hourly.items(), f)
            for us, rec in self._matching(f):
                agg.add(rec, us)
        return agg.rows()

    def count(self) -> int:
        with self._lock:
            return len(self._by_id)

    # -- runs -------------------------------------------------------------------------------
    def _apply_runs(self, writes: Sequence[RunWrite]) -> tuple[list[str], list[dict[str, Any]]]:
        """Apply writes in order (lock held); the results and the new run states."""
        results: list[str] = []
        changed: list[dict[str, Any]] = []
        for w in writes:
            outcome, new = apply_run_write(self._runs.get(w.run_id), w)
            results.append(outcome)
            if new is not None:
                self._runs[w.run_id] = new
                changed.append(new)
        return results, changed

    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        with self._lock:
            return self._apply_runs(writes)[0]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            run = self._runs.get(run_id)
            return None if run is None else dict(run)

    def _query_runs(
        self, agent_name: str | None, status: str | None, limit: int | None, offset: int
    ) -> list[dict[str, Any]]:
        with self._lock:
            # copies of the page only: callers may change what they get
            return [dict(r) for r in page_runs(self._runs.values(), agent_name, status, limit, offset)]

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()
            self._rows.clear()
            self._sorted = True
            self._runs.clear()
            self._hourly.clear()
            self.__dict__.pop("_ret_state", None)
