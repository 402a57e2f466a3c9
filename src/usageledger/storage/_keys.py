"""API keys in the storage backend (the optional part of the storage contract that the
collector's project keys use; :mod:`usageledger.server.auth` makes and checks them).

A key row holds ``id`` (public, the prefix of the token), ``project``, ``role``, ``name``,
``salt`` and ``hash`` (HMAC-SHA256 of the secret keyed with the row's own random salt: the
secret itself is never stored), ``created_at``, ``expires_at`` and ``revoked_at`` (ISO 8601
UTC strings, or None). Rows are never deleted: a revoked key keeps its row, so its id is
never given out again and listings show when it was revoked.

Every collector replica reads the row on every request that presents the key (no cache),
so a revocation committed by one replica is refused by all of them from the next request.

Two implementations: a dict for the memory backend, and SQL for sqlite and postgres (one
text, the placeholder swapped). The table is created on first use.
"""

from __future__ import annotations

import threading
from typing import Any

from ._sql import SideSql

__all__ = ["MemoryKeys", "SqlKeys", "KEY_TABLES", "KEY_FIELDS", "PROJECT_TAG"]

#: the tag that carries a record's project: the collector sets it from the key that sent
#: the record (whatever the body says), reads of a project key filter on it, and retention
#: keeps it as a dimension of the daily rollups
PROJECT_TAG = "usageledger_project"

KEY_FIELDS = ("id", "project", "role", "name", "salt", "hash", "created_at", "expires_at", "revoked_at")

KEY_TABLES = (
    "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, project TEXT NOT NULL, "
    "role TEXT NOT NULL, name TEXT, salt TEXT NOT NULL, hash TEXT NOT NULL, "
    "created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT)",
)


class MemoryKeys:
    """Key rows in a dict (the memory backend: nothing survives the process)."""

    supports_keys = True

    def _key_state(self) -> tuple[threading.Lock, dict[str, dict[str, Any]]]:
        state = self.__dict__.get("_keys_state")
        if state is None:
            state = self.__dict__.setdefault("_keys_state", (threading.Lock(), {}))
        return state

    def put_key(self, row: dict[str, Any]) -> None:
        lock, rows = self._key_state()
        with lock:
            if row["id"] in rows:
                raise ValueError(f"an API key with id {row['id']!r} exists already")
            rows[row["id"]] = {k: row.get(k) for k in KEY_FIELDS}

    def get_key(self, key_id: str) -> dict[str, Any] | None:
        lock, rows = self._key_state()
        with lock:
            row = rows.get(key_id)
            return None if row is None else dict(row)

    def list_keys(self, project: str | None = None) -> list[dict[str, Any]]:
        lock, rows = self._key_state()
        with lock:
            return [dict(r) for _, r in sorted(rows.items())
                    if project is None or r["project"] == project]

    def revoke_key(self, key_id: str, when: str, project: str | None = None) -> bool:
        lock, rows = self._key_state()
        with lock:
            row = rows.get(key_id)
            if row is None or row["revoked_at"] is not None or (
                    project is not None and row["project"] != project):
                return False
            row["revoked_at"] = when
            return True


class SqlKeys(SideSql):
    """Key rows in one table, through the backend's ``_side_sql`` hook (as
    :class:`~usageledger.storage._budgets.SqlBudgets`)."""

    supports_keys = True
    def _create_key_tables(self) -> None:
        for ddl in KEY_TABLES:
            self._side_sql(ddl, [])

    def _kq(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.__dict__.get("_key_tables"):
            self._create_key_tables()
            self.__dict__["_key_tables"] = True
        return self._side(sql, params)

    def put_key(self, row: dict[str, Any]) -> None:
        done = self._kq(f"INSERT INTO api_keys ({', '.join(KEY_FIELDS)}) VALUES "
                        f"({', '.join('?' * len(KEY_FIELDS))}) ON CONFLICT (id) DO NOTHING RETURNING id",
                        *(row.get(k) for k in KEY_FIELDS))
        if not done:
            raise ValueError(f"an API key with id {row['id']!r} exists already")

    def get_key(self, key_id: str) -> dict[str, Any] | None:
        # every request with a project key asks: a plain read, outside any write transaction
        # (SQLite's side statements take the write lock, which ingest holds meanwhile)
        if not self.__dict__.get("_key_tables"):
            self._kq("SELECT 1")
        rows = self._fetch(f"SELECT {', '.join(KEY_FIELDS)} FROM api_keys WHERE id = {self._placeholder}",
                           [key_id])
        return dict(zip(KEY_FIELDS, rows[0], strict=True)) if rows else None

    def list_keys(self, project: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(KEY_FIELDS)} FROM api_keys"
        rows = (self._kq(sql + " ORDER BY id") if project is None
                else self._kq(sql + " WHERE project = ? ORDER BY id", project))
        return [dict(zip(KEY_FIELDS, r, strict=True)) for r in rows]

    def revoke_key(self, key_id: str, when: str, project: str | None = None) -> bool:
        sql = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        if project is None:
            return bool(self._kq(sql + " RETURNING id", when, key_id))
        return bool(self._kq(sql + " AND project = ? RETURNING id", when, key_id, project))
