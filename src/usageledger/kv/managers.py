"""Persistence helpers built only on the :class:`~usageledger.kv.base.KVStore` contract:
``PersistenceManager`` (processed-item sets, state, errors), ``RetryManager`` (per-item
attempt counting with backoff) and ``StateTracker`` (counters and timing statistics).

Keys follow ``{prefix}:{type}:{identifier}`` inside the store's own key prefix.
Every read-modify-write goes through one atomic store operation (``incr``, ``sadd``,
``compare_and_set``), so any number of tasks, threads or processes sharing a store can
use the same manager names without losing updates.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from .base import MISSING, TTL, KVStore, ttl_seconds
from .config import get_global_store

__all__ = [
    "PersistenceManager", "RetryManager", "StateTracker", "DEFAULT_TTLS",
    "create_persistence_manager", "create_retry_manager", "create_state_tracker",
]

#: per-type default TTLs of PersistenceManager (override with ``ttls={type: ttl or None}``)
DEFAULT_TTLS: dict[str, TTL] = {
    "processed": timedelta(days=7),
    "state": timedelta(days=7),
    "errors": timedelta(hours=24),
}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class PersistenceManager:
    """Processed items, resumable state and error records for one ``prefix``."""

    def __init__(self, store: KVStore, prefix: str, ttls: dict[str, TTL] | None = None):
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix={prefix!r} must be a non-empty string")
        unknown = set(ttls or ()) - set(DEFAULT_TTLS)
        if unknown:
            raise ValueError(f"ttls has unknown types {sorted(unknown)}; known: {sorted(DEFAULT_TTLS)}")
        self.store = store
        self.prefix = prefix
        merged = {**DEFAULT_TTLS, **(ttls or {})}
        self.ttls = {t: ttl_seconds(v, f"ttls[{t!r}]") for t, v in merged.items()}

    def key(self, type_: str, identifier: str) -> str:
        return f"{self.prefix}:{type_}:{identifier}"

    # -- processed items: one real set per name, never one giant value ------------------
    async def save_processed_items(self, items: Iterable[str], name: str = "items") -> int:
        """Add ``items`` to the processed set ``name``; returns how many were new. Saving is
        a union: items already saved stay (use :meth:`clear_processed_items` to forget)."""
        return await self.store.sadd(self.key("processed", name), *items, ttl=self.ttls["processed"])

    async def load_processed_items(self, name: str = "items") -> set[str]:
        return await self.store.smembers(self.key("processed", name))

    async def is_processed(self, item: str, name: str = "items") -> bool:
        return await self.store.sismember(self.key("processed", name), item)

    async def count_processed_items(self, name: str = "items") -> int:
        return await self.store.scard(self.key("processed", name))

    async def clear_processed_items(self, name: str = "items") -> bool:
        return bool(await self.store.delete(self.key("processed", name)))

    # -- state ---------------------------------------------------------------------------
    async def save_state(self, state: Any, name: str = "current") -> None:
        """Store ``state`` (any value the store's serialiser takes) as a whole."""
        await self.store.set(self.key("state", name), state, ttl=self.ttls["state"])

    async def load_state(self, name: str = "current", default: Any = None) -> Any:
        return await self.store.get(self.key("state", name), default)

    async def clear_state(self, name: str = "current") -> bool:
        return bool(await self.store.delete(self.key("state", name)))

    # -- errors: one key per item, so concurrent workers never overwrite each other -------
    async def save_error(self, item_id: str, error: str, retry_count: int = 0) -> None:
        record = {"item_id": item_id, "error": str(error), "retry_count": int(retry_count),
                  "timestamp": _now_iso()}
        await self.store.set(self.key("errors", item_id), record, ttl=self.ttls["errors"])

    async def get_error(self, item_id: str) -> dict[str, Any] | None:
        return await self.store.get(self.key("errors", item_id))

    async def get_failed_items(self, max_retries: int = 3) -> list[dict[str, Any]]:
        """Error records whose ``retry_count`` is below ``max_retries``, oldest first."""
        base = self.key("errors", "")
        names = await self.store.keys(base)
        records = await self.store.mget(names)
        out = [r for r in records.values() if isinstance(r, dict) and r.get("retry_count", 0) < max_retries]
        return sorted(out, key=lambda r: r.get("timestamp", ""))

    async def clear_errors(self, item_id: str | None = None) -> int:
        """Forget the error of ``item_id``, or every error of this prefix."""
        if item_id is not None:
            return await self.store.delete(self.key("errors", item_id))
        names = await self.store.keys(self.key("errors", ""))
        return await self.store.delete(*names) if names else 0


class RetryManager:
    """Counts attempts per item with an atomic ``incr``, so two workers racing on one item
    are granted ``max_retries`` attempts in total, never more.

    ``should_retry`` is a snapshot for cheap checks; the race-safe decision is the number
    :meth:`record_retry` returns (granted while it is ``<= max_retries``), or simply
    :meth:`claim_retry`, which returns ``None`` once retries are used up.
    """

    def __init__(
        self,
        store: KVStore,
        max_retries: int = 3,
        backoff_factor: float = 2.0,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        jitter: bool = True,
        *,
        prefix: str = "retry",
        ttl: TTL = timedelta(hours=24),
    ):
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} must be a whole number >= 0")
        for name, value, low in (("backoff_factor", backoff_factor, 1.0), ("base_delay", base_delay, 0.0),
                                 ("max_delay", max_delay, 0.0)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
                raise ValueError(f"{name}={value!r} must be a number >= {low}")
        if max_delay < base_delay:
            raise ValueError(f"max_delay={max_delay!r} must be >= base_delay={base_delay!r}")
        self.store = store
        self.max_retries = max_retries
        self.backoff_factor = float(backoff_factor)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.jitter = bool(jitter)
        self.prefix = prefix
        self.ttl = ttl_seconds(ttl)

    def _keys(self, item_id: str) -> tuple[str, str]:
        return f"{self.prefix}:{item_id}:count", f"{self.prefix}:{item_id}:info"

    async def get_retry_count(self, item_id: str) -> int:
        return await self.store.get(self._keys(item_id)[0], 0)

    async def should_retry(self, item_id: str) -> bool:
        return await self.get_retry_count(item_id) < self.max_retries

    async def record_retry(self, item_id: str, error: str | None = None) -> int:
        """Atomically count one more attempt and return its number (1, 2, ...). A number
        above ``max_retries`` means another worker took the last attempt."""
        count_key, info_key = self._keys(item_id)
        count = await self.store.incr(count_key, 1, ttl=self.ttl)
        await self.store.set(
            info_key, {"last_error": error, "last_attempt": _now_iso(), "retry_count": count}, ttl=self.ttl
        )
        return count

    async def claim_retry(self, item_id: str, error: str | None = None) -> int | None:
        """The attempt number if this caller may retry, ``None`` if retries are used up."""
        count = await self.record_retry(item_id, error)
        return count if count <= self.max_retries else None

    async def get_retry_info(self, item_id: str) -> dict[str, Any] | None:
        return await self.store.get(self._keys(item_id)[1])

    async def get_retry_delay(self, item_id: str) -> float:
        """Exponential backoff for the item's current attempt count:
        ``min(max_delay, base_delay * backoff_factor ** (count - 1))``, with full jitter
        (uniform between 0 and that) when ``jitter`` is on, as in the dispatcher."""
        count = max(await self.get_retry_count(item_id), 1)
        try:
            delay = min(self.max_delay, self.base_delay * self.backoff_factor ** (count - 1))
        except OverflowError:
            delay = self.max_delay
        return random.uniform(0, delay) if self.jitter else delay

    async def clear_retry_data(self, item_id: str) -> bool:
        return bool(await self.store.delete(*self._keys(item_id)))


_MICRO = 1_000_000


class StateTracker:
    """Counters and per-operation timing statistics under ``name``.

    Concurrency: counters, the call count and the total (kept in integer microseconds) are
    ``incr``s, so no update is lost. Min and max are kept by a compare-and-set loop: read,
    and write only if the new time is better and the stored value is still the one read;
    a lost race re-reads, and every retry means another writer made progress, so the loop
    ends. This needs no server-side scripting from the store contract beyond
    ``compare_and_set``. ``last_updated`` is a plain write (the latest writer wins, which is
    what it means). A reader may see a count one step ahead of its total while a record is
    in flight; each figure on its own is exact.
    """

    def __init__(self, store: KVStore, name: str = "state_tracker", ttl: TTL = None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name={name!r} must be a non-empty string")
        self.store = store
        self.name = name
        self.ttl = ttl_seconds(ttl)

    def _counter_key(self, counter: str) -> str:
        return f"{self.name}:counter:{counter}"

    def _timing_key(self, operation: str, field: str) -> str:
        return f"{self.name}:timing:{operation}:{field}"

    async def increment_counter(self, counter: str, amount: int = 1) -> int:
        return await self.store.incr(self._counter_key(counter), amount, ttl=self.ttl)

    async def get_counter(self, counter: str) -> int:
        return await self.store.get(self._counter_key(counter), 0)

    async def get_counters(self) -> dict[str, int]:
        base = self._counter_key("")
        names = await self.store.keys(base)
        values = await self.store.mget(names)
        return {k[len(base):]: v for k, v in values.items()}

    async def reset_counter(self, counter: str) -> None:
        await self.store.delete(self._counter_key(counter))

    async def _keep_extreme(self, key: str, value: int, better: Callable[[int, int], bool]) -> None:
        while True:
            current = await self.store.get(key, MISSING)
            if current is not MISSING and not better(value, current):
                return
            if await self.store.compare_and_set(key, current, value, ttl=self.ttl):
                return

    async def record_processing_time(self, operation: str, duration: float) -> None:
        """Record one ``duration`` in seconds for ``operation``."""
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration >= 0:
            raise ValueError(f"duration={duration!r} must be a number of seconds >= 0")
        micros = round(duration * _MICRO)
        await self.store.incr(self._timing_key(operation, "count"), 1, ttl=self.ttl)
        await self.store.incr(self._timing_key(operation, "total_us"), micros, ttl=self.ttl)
        await self._keep_extreme(self._timing_key(operation, "min_us"), micros, lambda new, cur: new < cur)
        await self._keep_extreme(self._timing_key(operation, "max_us"), micros, lambda new, cur: new > cur)
        await self.store.set(self._timing_key(operation, "last_updated"), time.time(), ttl=self.ttl)

    async def get_processing_stats(self, operation: str) -> dict[str, Any]:
        """``count``, ``total_time``, ``min_time``, ``max_time``, ``avg_time`` (seconds) and
        ``last_updated`` (ISO 8601 UTC, or None); zeros when nothing was recorded."""
        fields = ("count", "total_us", "min_us", "max_us", "last_updated")
        got = await self.store.mget([self._timing_key(operation, f) for f in fields])
        v = {f: got.get(self._timing_key(operation, f)) for f in fields}
        count = v["count"] or 0
        total = (v["total_us"] or 0) / _MICRO
        updated = v["last_updated"]
        return {
            "count": count,
            "total_time": total,
            "min_time": (v["min_us"] or 0) / _MICRO,
            "max_time": (v["max_us"] or 0) / _MICRO,
            "avg_time": total / count if count else 0.0,
            "last_updated": None if updated is None else datetime.fromtimestamp(updated, UTC).isoformat(),
        }

    async def reset_processing_stats(self, operation: str) -> int:
        fields = ("count", "total_us", "min_us", "max_us", "last_updated")
        return await self.store.delete(*(self._timing_key(operation, f) for f in fields))


async def _ready(store: KVStore | None) -> KVStore:
    store = get_global_store() if store is None else store
    await store.ping()  # an unreachable Redis fails here, with its address, not mid-work
    return store


async def create_persistence_manager(
    prefix: str, store: KVStore | None = None, ttls: dict[str, TTL] | None = None
) -> PersistenceManager:
    """A :class:`PersistenceManager` on ``store`` (default: the global store)."""
    return PersistenceManager(await _ready(store), prefix, ttls)


async def create_retry_manager(
    max_retries: int = 3,
    backoff_factor: float = 2.0,
    base_delay: float = 1.0,
    max_delay: float = 300.0,
    jitter: bool = True,
    store: KVStore | None = None,
    prefix: str = "retry",
) -> RetryManager:
    """A :class:`RetryManager` on ``store`` (default: the global store)."""
    return RetryManager(await _ready(store), max_retries, backoff_factor, base_delay, max_delay, jitter,
                        prefix=prefix)


async def create_state_tracker(name: str = "state_tracker", store: KVStore | None = None) -> StateTracker:
    """A :class:`StateTracker` on ``store`` (default: the global store)."""
    return StateTracker(await _ready(store), name)
