"""The one way every usageledger SQLite file is opened and changed (journal, storage, KV
store, telemetry's agent_runs): :func:`connect_wal` opens it in WAL mode with our pragmas,
:func:`transaction` runs a block as one transaction, :func:`add_missing_columns` is the
forward migration (a new column is one more entry in a table's column list),
:class:`WalHandle` keeps the connection(s) of one file safe across ``fork()``, and
:class:`ForkGate` keeps ``fork()`` out of SQLite calls."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["connect_wal", "transaction", "add_missing_columns", "run_script", "WalHandle",
           "BackgroundCheckpoint", "is_corruption", "move_aside", "read_tables", "ForkGate",
           "fork_gate"]


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


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the write lock up front, waiting out the busy timeout) or, with
    ``immediate=False``, a deferred ``BEGIN`` (a read snapshot) on an autocommit
    connection: committed when the block ends, rolled back when it raises or when the
    COMMIT itself fails (a full disk), so the connection is never left inside a
    transaction. A ROLLBACK that fails (SQLite already rolled back) never hides the
    error that caused it."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def add_missing_columns(
    conn: sqlite3.Connection,
    table: str,
    columns: Mapping[str, str],
    *,
    required: Sequence[str] = (),
) -> list[str]:
    """The forward migration of a table: create ``table`` with ``columns`` (name ->
    declaration, in order, as in ``CREATE TABLE``) when it does not exist, else add each
    column it lacks (a ``PRIMARY KEY`` or ``UNIQUE`` in a declaration applies at creation
    only: ALTER TABLE cannot add one). Returns the names added to an existing table.

    ``required``: columns an existing table must already have (a table of that name not
    written by usageledger): ValueError naming them, before anything is changed. Run it
    inside :func:`transaction`, so two processes opening one old file at once do not both
    add a column."""
    have = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    if not have:
        decls = ", ".join(f"{name} {decl}" for name, decl in columns.items())
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({decls})")
        return []
    added = [name for name in columns if name not in have]
    missing = [name for name in required if name in added]
    if missing:
        raise ValueError(f"table {table!r} has no column(s) {missing}; it was not written by "
                         "usageledger and cannot be migrated")
    for name in added:
        decl = columns[name].replace(" PRIMARY KEY", "").replace(" UNIQUE", "")
        try:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        except sqlite3.OperationalError as exc:  # e.g. NOT NULL without a default
            raise sqlite3.OperationalError(
                f"cannot add column {name} {decl!r} to table {table!r}: {exc}") from exc
    return added


def is_corruption(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (not busy, full or read-only)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    msg = str(exc).lower()
    return "not a database" in msg or "malformed" in msg or "corrupt" in msg


def read_tables(path: str | os.PathLike[str]) -> set[str]:
    """The tables of the SQLite file at ``path``, read without creating, migrating or
    repairing anything (for tools looking at a file a user named, which must not "repair"
    a file that was never ours). sqlite3.DatabaseError when it is not a database."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def move_aside(path: str | os.PathLike[str]) -> Path:
    """Move a damaged file, with its ``-wal`` and ``-shm``, to ``<name>.corrupt-<unix
    time>`` beside it (a later number when that name is taken); returns where it went."""
    p = Path(path)
    stamp = int(time.time())
    while (aside := p.with_name(f"{p.name}.corrupt-{stamp}")).exists():
        stamp += 1
    os.replace(p, aside)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{p}{suffix}", f"{aside}{suffix}")
    return aside


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run each statement of ``script`` (triggers included) in the current transaction;
    ``executescript`` would COMMIT an open transaction first."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement at the end of a script: {statement.strip()[:200]!r}")


class WalHandle:
    """The connection of this process to one file, opened by :func:`connect_wal` (with
    ``connect`` keywords) on first use; with ``per_thread=True``, one connection per
    thread instead.

    Fork-guarded: a child process never uses, nor closes, a connection its parent opened
    (SQLite state copied by ``fork()`` corrupts the file when used from both sides); it
    opens its own on first use, and ``after_fork`` (if given) runs first, in the child.

    ``with handle as conn:`` is the shared connection under the handle's lock, inside the
    process's :data:`fork_gate` (so a ``fork()`` never copies an SQLite mutex held by
    this thread); :meth:`transaction` is the same inside :func:`transaction`.
    :meth:`reset` drops every connection (the file was replaced): each is closed by its
    next user, and :attr:`gen` counts the replacements."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        per_thread: bool = False,
        after_fork: Callable[[], None] | None = None,
        **connect: Any,
    ) -> None:
        self.path = Path(path)
        self.per_thread = per_thread
        self.after_fork = after_fork
        #: the keywords every connection of this handle is opened with
        self.connect_args: dict[str, Any] = connect
        #: bumped by reset(): connections of an older generation are to a replaced file
        self.gen = 0
        self._pid = os.getpid()
        self._local = threading.local()
        self._conn: sqlite3.Connection | None = None
        self._conn_gen = 0
        self._closed = False
        self.lock = threading.RLock()

    def forget_parent(self) -> None:
        """In a forked child: drop the parent's connection(s) and lock, never closing
        them (nothing to do in the process that opened them). Every use calls it first."""
        if self._pid != os.getpid():
            # abandon the parent's handles and lock (a parent thread may have held it at
            # fork, and would never release it here); never close them
            self._pid = os.getpid()
            self._local = threading.local()
            self._conn = None
            self.lock = threading.RLock()
            if self.after_fork is not None:
                self.after_fork()

    def get(self) -> sqlite3.Connection:
        """This process's (or thread's) connection, opened if needed."""
        self.forget_parent()
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path} was closed: cannot operate on a closed database")
        if not self.per_thread:
            conn = self._conn
            if conn is not None and self._conn_gen != self.gen:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                conn = None
            if conn is None:
                conn = self._conn = connect_wal(self.path, **self.connect_args)
                self._conn_gen = self.gen
            return conn
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.gen != self.gen:
            with contextlib.suppress(sqlite3.Error):
                conn.close()  # this thread's handle on a file that was moved aside
            conn = None
        if conn is None:
            conn = connect_wal(self.path, **self.connect_args)
            local.conn, local.gen = conn, self.gen
        return conn

    def conn_gen(self) -> int:
        """The generation of the calling thread's connection (of the file its last error
        came from); :attr:`gen` when it has none."""
        if self.per_thread:
            return getattr(self._local, "gen", self.gen)
        return self._conn_gen if self._conn is not None else self.gen

    def reset(self) -> None:
        """Drop every connection: the file at ``path`` is being replaced. The shared
        connection is closed now (call this before moving the file: closing a connection
        later would remove the ``-wal`` file found at its old name, by then the new
        file's); per-thread ones are closed by their threads' next call."""
        self.forget_parent()
        self.gen += 1
        self._local = threading.local()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The handle's lock, inside the fork gate, without opening a connection (e.g. to
        replace a file that does not open)."""
        self.forget_parent()  # before the lock: the parent's lock may be held forever here
        with fork_gate, self.lock:
            yield

    def __enter__(self) -> sqlite3.Connection:
        self.forget_parent()  # before the lock: the parent's lock may be held forever here
        fork_gate.__enter__()
        try:
            self.lock.acquire()
        except BaseException:
            fork_gate.__exit__()
            raise
        try:
            return self.get()
        except BaseException:
            self.lock.release()
            fork_gate.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        fork_gate.__exit__()

    @contextlib.contextmanager
    def transaction(self, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """The shared connection, locked, inside :func:`transaction`."""
        with self as conn, transaction(conn, immediate=immediate):
            yield conn

    def close(self, *, final: bool = False) -> None:
        """Close the connection of this process (of this thread, when per thread); it is
        opened again on next use, unless ``final`` (then a use raises, as a closed
        connection does)."""
        self._closed = final
        if self._pid != os.getpid():
            self.forget_parent()
            return
        if self.per_thread:
            conn = getattr(self._local, "conn", None)
            self._local = threading.local()
        else:
            conn, self._conn = self._conn, None
        if conn is not None:
            with fork_gate, contextlib.suppress(sqlite3.Error):
                conn.close()


class BackgroundCheckpoint:
    """Checkpoints ``handle``'s WAL on a thread of its own, so a writer's commit never
    copies pages into the main file nor waits for its fsync (the writer's connection gets
    ``wal_autocheckpoint`` = :attr:`WRITER_LIMIT` pages, only a backstop). Call
    :meth:`wrote` after each commit; every ``rows`` rows written, the thread runs a
    PASSIVE checkpoint under the handle's lock (so in the fork gate, on the same
    connection).

    Nothing about durability changes: a commit is in the WAL before it returns, exactly as
    before, and a checkpoint only moves committed pages. Measured at batch 1,000 on the
    2-core box: SQLite storage's ``save_many`` spent 11-16 µs per record of its 53-70 in
    the checkpoints SQLite ran inside the commit; with them here, the next request's
    decoding runs while the pages are copied (the checkpoint runs in SQLite, without
    the GIL)."""

    #: frames the WAL may reach before the writer checkpoints by itself (16 MB in 4 kB pages)
    WRITER_LIMIT = 4000

    def __init__(self, handle: WalHandle, *, rows: int = 1000) -> None:
        self._handle = handle
        self._rows = rows
        self._pending = 0
        self._pid = 0
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def wrote(self, rows: int) -> None:
        """``rows`` were committed: wakes the thread (started on first use, and again in a
        forked child) once ``rows`` add up to the threshold."""
        self._pending += rows
        if self._pending < self._rows or self._stopped:
            return
        self._pending = 0
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._event = threading.Event()  # the parent's may have been copied mid-wait
            self._thread = threading.Thread(target=self._run, args=(self._event,), daemon=True,
                                            name=f"usageledger-checkpoint {self._handle.path.name}")
            self._thread.start()
        self._event.set()

    def _run(self, event: threading.Event) -> None:
        # a connection of its own: a PASSIVE checkpoint then runs beside the writer instead
        # of holding the handle's lock (a writer waiting on it measured 26 against 12 µs
        # per record of insert, batch 1,000, when batches follow each other back to back)
        conn: sqlite3.Connection | None = None
        gen = -1
        try:
            while True:
                event.wait()
                event.clear()
                if self._stopped:
                    return
                with fork_gate:
                    try:
                        if conn is None or gen != self._handle.gen:  # a replaced file: reopen
                            if conn is not None:
                                conn.close()
                            gen = self._handle.gen
                            conn = connect_wal(self._handle.path, **self._handle.connect_args)
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:
                        pass  # a closed or damaged file: the next write meets and reports it
        finally:
            if conn is not None and self._pid == os.getpid():
                with fork_gate, contextlib.suppress(sqlite3.Error):
                    conn.close()

    def stop(self) -> None:
        """Ends the thread (after the checkpoint it is running, if any)."""
        self._stopped = True
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            self._event.set()
            thread.join(10)


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
