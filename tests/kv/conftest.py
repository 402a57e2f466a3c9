from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from usageledger.kv import KVStore, MemoryKVStore, SqliteKVStore

BACKENDS = ["memory", "sqlite", "redis"]
DURABLE = ["sqlite", "redis"]


class StoreFactory:
    """Builds fresh stores of one backend with a key prefix unique to the test; every store
    of one factory shares the same data (same SQLite file, same Redis db, same prefix)."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp_path: Any):
        self.kind = kind
        self.prefix = f"t-{uuid.uuid4().hex[:12]}:"
        self.path = tmp_path / "kv.sqlite3"
        self.redis_url = request.getfixturevalue("redis_server").url if kind == "redis" else None
        self._memory_shared: MemoryKVStore | None = None

    def options(self) -> dict[str, Any]:
        """Options for create_store / a child process."""
        if self.kind == "sqlite":
            return {"store_type": "sqlite", "path": str(self.path), "key_prefix": self.prefix}
        if self.kind == "redis":
            return {"store_type": "redis", "url": self.redis_url, "key_prefix": self.prefix}
        return {"store_type": "memory", "key_prefix": self.prefix}

    def __call__(self, **kw: Any) -> KVStore:
        kw.setdefault("key_prefix", self.prefix)
        if self.kind == "memory":
            store = MemoryKVStore(**kw)
            # stores of one factory share data, like two connections to one file or server
            if self._memory_shared is None:
                self._memory_shared = store
            store._data, store._expires = self._memory_shared._data, self._memory_shared._expires
            return store
        if self.kind == "sqlite":
            return SqliteKVStore(self.path, **kw)
        from usageledger.kv import RedisKVStore

        return RedisKVStore(url=self.redis_url, **kw)


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Any) -> StoreFactory:
    return StoreFactory(request.param, request, tmp_path)


@pytest.fixture(params=DURABLE)
def make_durable_store(request: pytest.FixtureRequest, tmp_path: Any) -> StoreFactory:
    return StoreFactory(request.param, request, tmp_path)


def run(make: Callable[..., KVStore], body: Callable[[KVStore], Awaitable[Any]], **kw: Any) -> Any:
    """Run ``body(store)`` on a fresh event loop with a fresh store, closing it after."""

    async def main() -> Any:
        store = make(**kw)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``check`` until true; fail after ``timeout`` (no fixed sleeps in tests)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
