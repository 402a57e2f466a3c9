"""Opening an SQLite file in WAL mode, the one way every usageledger file is opened
(journal, storage, KV store, telemetry's agent_runs)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

__all__ = ["connect_wal"]


def connect_wal(
    path: str | os.PathLike[str],
    *,
    busy_timeout_ms: int = 10_000,
    synchronous: str = "NORMAL",
    schema: str | None = None,
    pragmas: tuple[str, ...] = (),
) -> sqlite3.Connection:
    """A connection (autocommit, usable from any thread) to ``path`` in WAL mode, with
    ``schema`` applied. A new file is created 0600 first: usage data can name customers.

    When several processes open a new file at once, switching it to WAL and the first
    ``CREATE TABLE`` can answer "database is locked" at once, without waiting for the busy
    timeout; those steps are retried until ``busy_timeout_ms`` has passed.
    """
    p = Path(path)
    if not p.exists():
        os.close(os.open(p, os.O_CREAT | os.O_RDWR, 0o600))
    conn = sqlite3.connect(p, timeout=busy_timeout_ms / 1000, isolation_level=None,
                           check_same_thread=False)
    deadline = time.monotonic() + busy_timeout_ms / 1000
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={synchronous}")
                for pragma in pragmas:
                    conn.execute(f"PRAGMA {pragma}")
                if schema:
                    conn.executescript(schema)
                return conn
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
    except BaseException:
        conn.close()
        raise
