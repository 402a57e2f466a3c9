"""Async key-value persistence: one :class:`KVStore` contract, stores ``memory``,
``sqlite`` (embedded default) and ``redis``, and the helpers built on it
(``create_persistence_manager``, ``create_retry_manager``, ``create_state_tracker``).
See docs/kv.md."""

from __future__ import annotations

from typing import Any

from .base import (
    MISSING,
    KVConfigError,
    KVError,
    KVSerializationError,
    KVStore,
    KVTypeError,
    KVUnavailableError,
    PickleNotAllowedError,
    PickleWarning,
)
from .config import (
    configure_global_store,
    create_store,
    get_global_store,
    reset_global_store,
    set_global_store,
)
from .managers import (
    PersistenceManager,
    RetryManager,
    StateTracker,
    create_persistence_manager,
    create_retry_manager,
    create_state_tracker,
)
from .memory import MemoryKVStore
from .sqlite import SqliteKVStore
from .sync import SyncKVStore, sync_store

__all__ = [
    "KVStore", "MemoryKVStore", "SqliteKVStore", "RedisKVStore", "SyncKVStore", "sync_store",
    "KVError", "KVUnavailableError", "KVTypeError", "KVSerializationError", "PickleNotAllowedError",
    "KVConfigError", "PickleWarning", "MISSING",
    "create_store", "configure_global_store", "get_global_store", "set_global_store",
    "reset_global_store",
    "PersistenceManager", "RetryManager", "StateTracker",
    "create_persistence_manager", "create_retry_manager", "create_state_tracker",
]


def __getattr__(name: str) -> Any:
    # redis is an optional extra: import it only when asked for
    if name == "RedisKVStore":
        from .redis_store import RedisKVStore

        return RedisKVStore
    raise AttributeError(f"module 'usageledger.kv' has no attribute {name!r}")
