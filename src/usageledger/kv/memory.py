"""In-process store: a dict, for tests and single-process scripts. Nothing survives the
process. Values are serialised like in the other stores, so a value that would fail on
SQLite or Redis fails here too, and mutating an object after ``set`` does not change
what is stored.

Every method runs without awaiting between its read and its write, so each one is atomic
for all tasks on the event loop; the store is not meant to be shared across threads
(use :class:`usageledger.kv.SyncKVStore` for that)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from .base import (
    MISSING,
    TTL,
    KVStore,
    KVTypeError,
    check_members,
)

__all__ = ["MemoryKVStore"]


class MemoryKVStore(KVStore):
    kind = "memory"

    def __init__(self, *, sweep_interval: float = 60.0, **kw: Any):
        super().__init__(**kw)
        # value (bytes or int) or set[str] per full key; expiry as time.monotonic()
        self._data: dict[str, bytes | int | set[str]] = {}
        self._expires: dict[str, float] = {}
        self._sweep_interval = sweep_interval
        self._next_sweep = time.monotonic() + sweep_interval

    # -- expiry ---------------------------------------------------------------------------
    def _live(self, full: str) -> Any:
        """The raw entry, or MISSING if absent or expired (dropping it)."""
        entry = self._data.get(full, MISSING)
        if entry is not MISSING:
            exp = self._expires.get(full)
            if exp is not None and exp <= time.monotonic():
                self._drop(full)
                return MISSING
        return entry

    def _drop(self, full: str) -> bool:
        self._expires.pop(full, None)
        return self._data.pop(full, MISSING) is not MISSING

    def _set_expiry(self, full: str, seconds: float | None) -> None:
        if seconds is None:
            self._expires.pop(full, None)
        else:
            self._expires[full] = time.monotonic() + seconds

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval
            for full in [k for k, exp in self._expires.items() if exp <= now]:
                self._drop(full)

    def _value(self, full: str, key: str) -> Any:
        entry = self._live(full)
        if isinstance(entry, set):
            raise KVTypeError(f"key {key!r} holds a set; use smembers()")
        return entry

    def _set_entry(self, full: str, key: str) -> set[str] | None:
        entry = self._live(full)
        if entry is MISSING:
            return None
        if not isinstance(entry, set):
            raise KVTypeError(f"key {key!r} holds a value, not a set")
        return entry

    # -- contract -------------------------------------------------------------------------
    async def get(self, key: str, default: Any = None) -> Any:
        entry = self._value(self._k(key), key)
        return default if entry is MISSING else self.codec.decode(entry, key)

    async def set(self, key: str, value: Any, ttl: TTL = None) -> None:
        full, seconds = self._k(key), self._ttl(ttl)
        data = self.codec.encode_native(value, key)
        self._maybe_sweep()
        self._data[full] = data
        self._set_expiry(full, seconds)

    async def delete(self, *keys: str) -> int:
        return sum(self._live(full) is not MISSING and self._drop(full) for full in map(self._k, keys))

    async def exists(self, key: str) -> bool:
        return self._live(self._k(key)) is not MISSING

    async def incr(self, key: str, amount: int = 1, ttl: TTL = None) -> int:
        if type(amount) is not int:
            raise TypeError(f"amount={amount!r} must be an int")
        full, seconds = self._k(key), self._ttl(ttl)
        entry = self._value(full, key)
        if entry is MISSING:
            self._maybe_sweep()
            self._data[full] = amount
            self._set_expiry(full, seconds)
            return amount
        if type(entry) is not int:
            raise KVTypeError(f"key {key!r} does not hold an integer; incr() needs one")
        self._data[full] = entry + amount
        return entry + amount

    async def keys(self, prefix: str = "") -> list[str]:
        full = self._k(prefix)
        return sorted(
            self._strip(k) for k in list(self._data) if k.startswith(full) and self._live(k) is not MISSING
        )

    async def mget(self, keys: Iterable[str]) -> dict[str, Any]:
        out = {}
        for key in keys:
            entry = self._live(self._k(key))
            if entry is not MISSING and not isinstance(entry, set):
                out[key] = self.codec.decode(entry, key)
        return out

    async def mset(self, mapping: Mapping[str, Any], ttl: TTL = None) -> None:
        seconds = self._ttl(ttl)
        # encode everything first: a value that cannot be serialised writes nothing
        encoded = [(self._k(k), self.codec.encode_native(v, k)) for k, v in mapping.items()]
        self._maybe_sweep()
        for full, data in encoded:
            self._data[full] = data
            self._set_expiry(full, seconds)

    async def expire(self, key: str, ttl: TTL) -> bool:
        full, seconds = self._k(key), self._ttl(ttl)
        if self._live(full) is MISSING:
            return False
        self._set_expiry(full, seconds)
        return True

    async def ttl(self, key: str) -> float | None:
        full = self._k(key)
        if self._live(full) is MISSING or full not in self._expires:
            return None
        return max(self._expires[full] - time.monotonic(), 0.0)

    async def compare_and_set(self, key: str, expected: Any, new: Any, ttl: TTL = None) -> bool:
        full, seconds = self._k(key), self._ttl(ttl)
        data = self.codec.encode_native(new, key)
        entry = self._value(full, key)
        if expected is MISSING:
            if entry is not MISSING:
                return False
        elif entry is MISSING or entry != self.codec.encode_native(expected, key):
            return False
        self._data[full] = data
        self._set_expiry(full, seconds)
        return True

    async def sadd(self, key: str, *members: str, ttl: TTL = None) -> int:
        full, seconds, items = self._k(key), self._ttl(ttl), check_members(members)
        current = self._set_entry(full, key)
        if current is None:
            if not items:
                return 0
            self._maybe_sweep()
            current = self._data[full] = set()
            self._expires.pop(full, None)
        before = len(current)
        current.update(items)
        if seconds is not None:
            self._set_expiry(full, seconds)
        return len(current) - before

    async def srem(self, key: str, *members: str) -> int:
        full, items = self._k(key), check_members(members)
        current = self._set_entry(full, key)
        if current is None:
            return 0
        before = len(current)
        current.difference_update(items)
        if not current:
            self._drop(full)
        return before - len(current)

    async def smembers(self, key: str) -> set[str]:
        return set(self._set_entry(self._k(key), key) or ())

    async def scard(self, key: str) -> int:
        return len(self._set_entry(self._k(key), key) or ())

    async def sismember(self, key: str, member: str) -> bool:
        check_members([member])
        return member in (self._set_entry(self._k(key), key) or ())

    async def clear(self) -> int:
        doomed = [k for k in self._data if k.startswith(self.key_prefix)]
        live = sum(self._live(k) is not MISSING for k in doomed)
        for k in doomed:
            self._drop(k)
        return live
