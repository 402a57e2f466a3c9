"""Storage backends for usage records and agent runs, chosen by name or URL.

``create_storage(kind, **kw)`` where ``kind`` is a name (``memory``, ``sqlite``, ``jsonl``,
``postgres``, ``redis``, ``chdb``, ``clickhouse``) or a URL (``memory://``,
``sqlite:///relative.db``, ``sqlite:////absolute/path.db``, ``jsonl:///path``,
``postgresql://...``, ``redis://...``, ``chdb:///path``, ``clickhouse://user:pass@host:8123/db``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import RUN_RESULTS, RunStore, RunWrite, StorageBackend

__all__ = ["create_storage", "StorageBackend", "RunStore", "RunWrite", "RUN_RESULTS", "STORAGE_KINDS"]

STORAGE_KINDS = ("memory", "sqlite", "jsonl", "postgres", "redis", "chdb", "clickhouse")
_URL_SCHEMES = ("memory://", "sqlite:///path", "jsonl:///path", "postgresql://...", "redis://...",
                "chdb:///path", "clickhouse://...")


def _file_path(url: str, scheme: str, kw: dict[str, Any], keys: tuple[str, ...]) -> str | Path:
    # sqlite:///rel.db is relative and sqlite:////abs.db absolute, as in SQLAlchemy
    path = url[len(scheme) + 3:]
    if not path.startswith("/"):
        raise ValueError(f"{scheme} URL must look like {scheme}:///path, got {url!r}")
    path = path[1:]
    if not path:
        raise ValueError(f"{scheme} URL {url!r} names no file")
    for k in keys:
        if k in kw:
            raise TypeError(f"{k}={kw[k]!r} given together with the URL {url!r}")
    return path


def _path_option(name: str, scheme: str, kw: dict[str, Any], key: str, alias: str) -> None:
    """Set ``kw[key]`` (the backend's file option) from a ``scheme:///path`` URL, or from
    ``alias`` (the other backends' spelling) when only that was given."""
    if name.lower() != scheme:
        kw[key] = _file_path(name, scheme, kw, (key, alias))
    elif alias in kw and key not in kw:
        kw[key] = kw.pop(alias)


def create_storage(kind: str = "memory", **kw: Any) -> StorageBackend:
    """A storage backend by name (options as keywords) or by URL.

    - ``memory`` / ``memory://``: :class:`~usageledger.storage.memory.MemoryStorage`
    - ``sqlite`` (``db_path=``) / ``sqlite:///path``: :class:`~usageledger.storage.sqlite.SQLiteStorage`
    - ``jsonl`` (``path=``) / ``jsonl:///path``: :class:`~usageledger.storage.jsonl.JsonlStorage`
    - ``postgres`` (``url=``/``dsn=``) / ``postgresql://...``: :class:`~usageledger.storage.postgres.PostgresStorage`
    - ``redis`` (``url=``) / ``redis://...``: :class:`~usageledger.storage.redis.RedisStorage`
    - ``chdb`` (``path=``) / ``chdb:///path``, ``clickhouse`` (``url=``) /
      ``clickhouse://user:pass@host:8123/db`` (``clickhouses://`` for HTTPS):
      :class:`~usageledger.storage.clickhouse.ClickHouseStorage`

    Other keywords go to the backend's constructor. Unknown kinds raise ValueError.
    """
    if not isinstance(kind, str):
        raise TypeError(f"storage kind must be a string, got {kind!r}")
    name = kind.strip()
    lowered = name.lower()
    if lowered in ("memory", "memory://"):
        from .memory import MemoryStorage

        if kw:
            raise TypeError(f"memory storage takes no options, got {sorted(kw)}")
        return MemoryStorage()
    if lowered == "sqlite" or lowered.startswith("sqlite://"):
        from .sqlite import SQLiteStorage

        _path_option(name, "sqlite", kw, "db_path", "path")
        return SQLiteStorage(**kw)
    if lowered == "jsonl" or lowered.startswith("jsonl://"):
        from .jsonl import JsonlStorage

        _path_option(name, "jsonl", kw, "path", "db_path")
        return JsonlStorage(**kw)
    if lowered in ("postgres", "postgresql") or lowered.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStorage

        if lowered not in ("postgres", "postgresql"):
            kw["url"] = name
        elif "dsn" in kw and "url" not in kw:
            kw["url"] = kw.pop("dsn")
        if not kw.get("url"):
            raise ValueError("postgres storage needs url='postgresql://user@host/db' (or pass the URL as kind)")
        return PostgresStorage(**kw)
    if lowered == "redis" or lowered.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStorage

        if lowered != "redis":
            kw["url"] = name
        return RedisStorage(**kw)
    if lowered == "chdb" or lowered.startswith("chdb://"):
        from .clickhouse import ClickHouseStorage

        _path_option(name, "chdb", kw, "path", "db_path")
        return ClickHouseStorage(**kw)
    if lowered == "clickhouse" or lowered.startswith(("clickhouse://", "clickhouses://")):
        from .clickhouse import ClickHouseStorage

        if lowered != "clickhouse":
            kw["url"] = name
        if not kw.get("url"):
            raise ValueError("clickhouse storage needs url='clickhouse://user:pass@host:8123/db' "
                             "(or pass the URL as kind; chdb:///path for the embedded engine)")
        return ClickHouseStorage(**kw)
    raise ValueError(
        f"unknown storage {kind!r}: use one of {', '.join(STORAGE_KINDS)} "
        f"or a URL ({', '.join(_URL_SCHEMES)})"
    )
