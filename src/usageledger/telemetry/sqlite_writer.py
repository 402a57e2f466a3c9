"""SQLite ``agent_runs`` table: one row per run holding its latest state.

Every write carries the run's ``seq``; an insert or update whose ``seq`` is not newer
than the stored one changes nothing, in the same statement (``INSERT ... ON CONFLICT DO
UPDATE ... WHERE excluded.seq > agent_runs.seq``). So replays after a crash and batches
that arrive out of order never roll a run back, and an update that arrives before its
insert creates the run.

WAL with ``synchronous=FULL`` (one fsync per batch, which the dispatcher sends as one
transaction) and a 30 s busy timeout: several processes may write the same file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..core import _hooks
from ..core._sqlite import WalHandle, add_missing_columns
from ..core.sink import OK, Result, Retry, Sink, decode_batch
from ..schema.records import KIND_RUN, encode
from ..schema.runs import RunRecord, RunWrite

if TYPE_CHECKING:
    from ..core.journal.base import JournalItem

log = logging.getLogger("usageledger.telemetry.sqlite")

__all__ = ["DatabaseWriter", "SqliteRunSink"]

_FIELDS: tuple[str, ...] = RunRecord.__struct_fields__
_INT_COLUMNS = {"schema_version", "items_discovered", "items_succeeded", "items_failed", "duration_ms"}
_COLUMNS = [*_FIELDS, "seq", "write_id"]
_TYPES = {name: ("INTEGER" if name in _INT_COLUMNS else "TEXT") for name in _FIELDS}
_TYPES.update(run_id="TEXT PRIMARY KEY", seq="INTEGER NOT NULL DEFAULT 0", write_id="TEXT")
#: the agent_runs table, created from this list and brought forward by it
RUN_COLUMNS: dict[str, str] = {"run_id": _TYPES["run_id"],
                               **{c: _TYPES[c] for c in _COLUMNS if c != "run_id"}}

_UPSERT = (
    f"INSERT INTO agent_runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT(run_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "run_id")
    + " WHERE excluded.seq > agent_runs.seq"
)
_decode_write = msgspec.json.Decoder(RunWrite).decode


class DatabaseWriter:
    """The ``agent_runs`` table in the SQLite file ``path`` (schema migrates forward)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 30_000):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        # one connection behind a lock, in the fork gate; a forked child opens its own
        self._db = WalHandle(self.path, busy_timeout_ms=busy_timeout_ms, synchronous="FULL")
        with self._db.transaction() as conn:
            self._migrate(conn)
        _hooks.reset_in_child(self)

    def _after_fork_child(self) -> None:
        # a thread of the parent may have held the lock at fork(); it never releases it
        # here (the handle also checks on every use)
        self._db.forget_parent()

    def _connection(self) -> sqlite3.Connection:
        return self._db.get()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        add_missing_columns(conn, "agent_runs", RUN_COLUMNS)
        conn.execute("CREATE INDEX IF NOT EXISTS agent_runs_status ON agent_runs (status)")
        conn.execute("CREATE INDEX IF NOT EXISTS agent_runs_agent ON agent_runs (agent_name, start_time)")

    @staticmethod
    def _row(record: RunRecord, seq: int, write_id: str | None) -> tuple[Any, ...]:
        values = [getattr(record, f) for f in _FIELDS]
        i = _FIELDS.index("metrics_json")
        if values[i] is not None:
            values[i] = encode(values[i]).decode()
        return (*values, seq, write_id)

    # -- writes -----------------------------------------------------------------------------
    def write_runs(self, writes: list[RunWrite]) -> int:
        """Apply run writes in one transaction; a write whose ``seq`` is not newer than
        the stored one is ignored. Returns how many rows changed."""
        rows = [self._row(w, w.seq, w.id or None) for w in writes]
        with self._db.transaction() as conn:
            before = conn.total_changes
            conn.executemany(_UPSERT, rows)
            return conn.total_changes - before

    def insert_run(self, record: RunRecord, seq: int = 1) -> bool:
        """Store a run (or, if it exists, apply this state when ``seq`` is newer).
        True when a row changed."""
        return self._write_one(record, seq)

    def update_run(self, record: RunRecord, seq: int | None = None) -> bool:
        """Apply ``record`` as the run's state when ``seq`` is newer than the stored one
        (None: one past the stored seq, i.e. always). False for an unknown run or a stale
        ``seq``."""
        with self._db as conn:
            row = conn.execute("SELECT seq FROM agent_runs WHERE run_id = ?", (record.run_id,)).fetchone()
        if row is None:
            return False
        return self._write_one(record, row[0] + 1 if seq is None else seq)

    def _write_one(self, record: RunRecord, seq: int) -> bool:
        if not isinstance(record, RunRecord):
            raise TypeError(f"record must be a RunRecord, got {record!r}")
        if type(seq) is not int or seq < 0:
            raise ValueError(f"seq must be a non-negative integer, got {seq!r}")
        with self._db as conn:
            before = conn.total_changes
            conn.execute(_UPSERT, self._row(record, seq, getattr(record, "id", None) or None))
            return conn.total_changes > before

    # -- reads ------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None:
        row = self.get_row(run_id)
        return None if row is None else RunRecord.from_dict(row)

    def get_row(self, run_id: str) -> dict[str, Any] | None:
        """The stored row as a dict, with ``seq`` and ``write_id``."""
        with self._db as conn:
            cur = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM agent_runs WHERE run_id = ?", (run_id,))
            row = cur.fetchone()
        if row is None:
            return None
        out = dict(zip(_COLUMNS, row, strict=True))
        if out["metrics_json"] is not None:
            out["metrics_json"] = msgspec.json.decode(out["metrics_json"])
        return out

    def get_run_stats(self) -> dict[str, Any]:
        """``total`` and ``by_status`` counts of the stored runs."""
        with self._db as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM agent_runs GROUP BY status").fetchall()
        by_status = {status: n for status, n in rows}
        return {"total": sum(by_status.values()), "by_status": by_status}

    def check_integrity(self) -> tuple[bool, str]:
        """``PRAGMA integrity_check``: (True, "ok") or (False, what is wrong)."""
        try:
            with self._db as conn:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        message = "; ".join(str(r[0]) for r in rows)
        return message == "ok", message

    def close(self) -> None:
        with self._db.held():
            self._db.close()


class SqliteRunSink(Sink):
    """Run writes -> ``agent_runs``, one transaction per batch."""

    name = "sqlite"

    def __init__(self, writer: DatabaseWriter):
        self.writer = writer

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        decoded, results = decode_batch(
            batch, KIND_RUN, _decode_write, taker="the agent_runs table", noun="run write"
        )
        writes = [w for _, w in decoded]
        ids = [i for i, _ in decoded]
        if writes:
            try:
                self.writer.write_runs(writes)
            except sqlite3.Error as exc:  # locked past the busy timeout, disk full
                log.warning("agent_runs refused %d writes: %r", len(writes), exc)
                retry = Retry(None, f"{type(exc).__name__}: {exc}")
                return {**results, **{i: retry for i in ids}}
            results.update({i: OK for i in ids})
        return results

    def close(self) -> None:
        self.writer.close()
