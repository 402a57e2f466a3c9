"""Synchronous facade for code without an event loop: a private event loop on a background
thread runs the async store; each call blocks until its result (or ``timeout``).

    with sync_store("sqlite", path="state.db") as kv:
        kv.set("a", 1)
        kv.incr("a")
        pm = kv.wrap(kv.call(create_persistence_manager("job", store=kv.store)))
        pm.save_state({"cursor": 10})

Thread-safe: any number of threads may share one facade (calls are serialised onto the
loop, where each store operation is atomic).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from .base import TTL, KVError, KVStore
from .config import create_store

__all__ = ["SyncKVStore", "sync_store"]

T = TypeVar("T")


class SyncKVStore:
    """Blocking twin of :class:`KVStore`. Pass a store, a zero-argument factory returning
    one (run on the private loop), or nothing to use :func:`create_store` with
    ``store_type``/``options``. Do not also use the wrapped store from another loop."""

    def __init__(
        self,
        store: KVStore | Callable[[], KVStore] | None = None,
        *,
        store_type: str | None = None,
        timeout: float | None = 60.0,
        **options: Any,
    ):
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="usageledger-kv-sync", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> KVStore:
            if isinstance(store, KVStore):
                return store
            if store is not None:
                return store()
            return create_store(store_type, **options)

        try:
            self.store: KVStore = self.call(make())
        except BaseException:
            self._stop_loop()
            raise

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run any coroutine (e.g. a manager method) on the private loop and return its result."""
        if self._closed:
            coro.close()
            raise KVError("SyncKVStore is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def wrap(self, obj: Any) -> Any:
        """A proxy whose coroutine methods block: ``kv.wrap(manager).save_state(...)``."""
        return _SyncProxy(self, obj)

    # -- the contract, blocking ----------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.call(self.store.get(key, default))

    def set(self, key: str, value: Any, ttl: TTL = None) -> None:
        self.call(self.store.set(key, value, ttl))

    def delete(self, *keys: str) -> int:
        return self.call(self.store.delete(*keys))

    def exists(self, key: str) -> bool:
        return self.call(self.store.exists(key))

    def incr(self, key: str, amount: int = 1, ttl: TTL = None) -> int:
        return self.call(self.store.incr(key, amount, ttl))

    def keys(self, prefix: str = "") -> list[str]:
        return self.call(self.store.keys(prefix))

    def mget(self, keys: Iterable[str]) -> dict[str, Any]:
        return self.call(self.store.mget(list(keys)))

    def mset(self, mapping: Mapping[str, Any], ttl: TTL = None) -> None:
        self.call(self.store.mset(mapping, ttl))

    def expire(self, key: str, ttl: TTL) -> bool:
        return self.call(self.store.expire(key, ttl))

    def ttl(self, key: str) -> float | None:
        return self.call(self.store.ttl(key))

    def compare_and_set(self, key: str, expected: Any, new: Any, ttl: TTL = None) -> bool:
        return self.call(self.store.compare_and_set(key, expected, new, ttl))

    def sadd(self, key: str, *members: str, ttl: TTL = None) -> int:
        return self.call(self.store.sadd(key, *members, ttl=ttl))

    def srem(self, key: str, *members: str) -> int:
        return self.call(self.store.srem(key, *members))

    def smembers(self, key: str) -> set[str]:
        return self.call(self.store.smembers(key))

    def scard(self, key: str) -> int:
        return self.call(self.store.scard(key))

    def sismember(self, key: str, member: str) -> bool:
        return self.call(self.store.sismember(key, member))

    def clear(self) -> int:
        return self.call(self.store.clear())

    def ping(self) -> None:
        self.call(self.store.ping())

    def close(self) -> None:
        """Close the store and stop the private loop."""
        if self._closed:
            return
        try:
            self.call(self.store.close())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncKVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncKVStore {self.store!r}>"


class _SyncProxy:
    def __init__(self, runner: SyncKVStore, obj: Any):
        self._runner = runner
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._runner.call(attr(*args, **kwargs))

        return blocking


def sync_store(store_type: str | None = None, **options: Any) -> SyncKVStore:
    """A :class:`SyncKVStore` over ``create_store(store_type, **options)``."""
    return SyncKVStore(store_type=store_type, **options)
