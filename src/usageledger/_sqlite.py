"""Opening an SQLite file in WAL mode, the one way every usageledger file is opened
(journal, storage, KV store, telemetry's agent_runs)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["connect_wal", "ForkGate", "fork_gate"]


def connect_wal(
    path: str | os.PathLike[str],
    *,
    busy_timeout_ms: int = 10_000,
    synchronous: str = "NORMAL",
    schema: str | None = None,
    pragmas: tuple[str, ...] = (),
    migrate: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """A connection (autocommit, usable from any thread) to ``path`` in WAL mode, with
    ``schema`` applied, then ``migrate(conn)``. A new file is created 0600 first: usage data can name customers.

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
                if migrate is not None:
                    migrate(conn)
                return conn
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
    except BaseException:
        conn.close()
        raise


class ForkGate:
    """Keeps ``fork()`` out of SQLite. Every SQLite call of a journal runs inside the gate
    (shared: any number of threads at once); the fork hook closes it (waits until no
    thread of ours is inside SQLite, then holds new callers back) and opens it again in
    the parent and, fresh, in the child. A mutex of SQLite held by a parent thread at fork
    time is copied locked into the child, which then hangs forever on its first call
    (2-3 of 20 children measured, with one thread appending while the main thread forks).

    Re-entrant per thread, so a journal call made inside another never waits on a fork
    that is waiting on it. Costs one uncontended lock per journal transaction (a batch),
    nothing on the enqueue path."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._closed = False
        self._local = threading.local()

    def __enter__(self) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._closed:
                    self._cond.wait()
                self._inside += 1
        self._local.depth = depth + 1

    def __exit__(self, *exc: object) -> None:
        depth = self._local.depth - 1
        self._local.depth = depth
        if depth == 0:
            with self._cond:
                self._inside -= 1
                if self._closed and not self._inside:
                    self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Before fork: wait (up to ``timeout``) until no thread is inside, keep the gate
        closed and its lock held across the fork. False when threads were still inside."""
        self._cond.acquire()
        self._closed = True
        deadline = time.monotonic() + timeout
        while self._inside and getattr(self._local, "depth", 0) == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(left)
        return True

    def open(self) -> None:
        """After fork, in the parent: let callers in again."""
        self._closed = False
        self._cond.notify_all()
        self._cond.release()

    def reset(self) -> None:
        """After fork, in the child: only the forking thread exists; start afresh."""
        depth = getattr(self._local, "depth", 0)
        self.__init__()  # type: ignore[misc]
        self._local.depth = depth


#: the one gate of this process (journals use it; see ForkGate)
fork_gate = ForkGate()
