"""SQLite journal: WAL, one connection per thread and process, claims by UPDATE...RETURNING.

Any number of processes may append to one file; the lease decides which one claims.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import logging
import operator
import os
import random
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from ...schema.records import encode
from .._sqlite import (
    WalHandle,
    add_missing_columns,
    fork_gate,
    is_corruption,
    move_aside,
    read_tables,
    run_script,
    transaction,
)
from .base import (
    DEAD,
    INFLIGHT,
    READY,
    Journal,
    JournalDestinationError,
    JournalError,
    JournalItem,
    state_code,
)

log = logging.getLogger("usageledger.journal")

# No secondary index on `items`: an index on (state, not_before) cost 30% of insert
# throughput here (measured: 293k vs 210k rows/s). Claims scan in rowid order, and the
# rows they skip are few because dead items live in their own table and delivered ones
# are deleted; only items waiting out a backoff are passed over.
#: the items table, created from this list and brought forward by it (``claim`` came later)
ITEMS_COLUMNS: dict[str, str] = {
    "id": "TEXT NOT NULL",
    "kind": "TEXT NOT NULL",
    "data": "BLOB NOT NULL",
    "state": "INTEGER NOT NULL DEFAULT 0",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "not_before": "REAL NOT NULL DEFAULT 0",
    "created": "REAL NOT NULL",
    "last_error": "TEXT",
    "owner": "TEXT",
    "claim": "INTEGER",
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead (
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    created REAL NOT NULL,
    last_error TEXT,
    died REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_id ON dead(id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('delivered', 0), ('retried', 0);
"""

_LEASE = "dispatcher"
#: key/value facts about the journal; ``destination`` names where its records go
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# Every write of the delivery path is ONE statement (see append()): append, ack, retry
# and dead are INSERTs into views whose INSTEAD OF triggers do the work, atomically, in C.
# The partial index finds the rows of one claim; rows enter it only when claimed, so
# appends do not pay for it.
# Payloads live in their own table keyed by the item's rowid (rows appended by earlier
# versions keep theirs in items.data): claims and retries rewrite only the small item
# rows, not pages of payload, so an outage of retries writes little WAL.
_OPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS payloads (rowid INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS items_claim ON items(claim) WHERE claim IS NOT NULL;
CREATE VIEW IF NOT EXISTS op_append(ids, kinds, kind_width, spans, blob, created)
    AS SELECT NULL, NULL, NULL, NULL, NULL, NULL;
CREATE TRIGGER IF NOT EXISTS op_append_do INSTEAD OF INSERT ON op_append BEGIN
    INSERT INTO items(id, kind, data, created)
        SELECT value, rtrim(CAST(substr(new.kinds, key * new.kind_width + 1, new.kind_width) AS TEXT)),
               x'', new.created
        FROM json_each(new.ids);
    -- new rowids are max(rowid)+1 in turn, so the batch ends at max(rowid)
    INSERT OR REPLACE INTO payloads(rowid, data)
        SELECT (SELECT max(rowid) - json_array_length(new.ids) + 1 FROM items) + key,
               substr(new.blob, CAST(substr(new.spans, key * 24 + 1, 12) AS INTEGER),
                      CAST(substr(new.spans, key * 24 + 13, 12) AS INTEGER))
        FROM json_each(new.ids);
END;
CREATE VIEW IF NOT EXISTS op_ack(rowids) AS SELECT NULL;
CREATE TRIGGER IF NOT EXISTS op_ack_do INSTEAD OF INSERT ON op_ack BEGIN
    DELETE FROM payloads WHERE rowid IN (SELECT rowid FROM items
        WHERE rowid IN (SELECT value FROM json_each(new.rowids)) AND state=1);
    DELETE FROM items WHERE rowid IN (SELECT value FROM json_each(new.rowids)) AND state=1;
    UPDATE counters SET value=value+changes() WHERE name='delivered';
END;
CREATE VIEW IF NOT EXISTS op_retry(rowids, not_before, error) AS SELECT NULL, NULL, NULL;
CREATE TRIGGER IF NOT EXISTS op_retry_do INSTEAD OF INSERT ON op_retry BEGIN
    UPDATE items SET state=0, owner=NULL, claim=NULL, not_before=new.not_before, last_error=new.error
        WHERE rowid IN (SELECT value FROM json_each(new.rowids)) AND state=1;
    UPDATE counters SET value=value+changes() WHERE name='retried';
END;
CREATE VIEW IF NOT EXISTS op_dead(rowids, error, died) AS SELECT NULL, NULL, NULL;
CREATE TRIGGER IF NOT EXISTS op_dead_do INSTEAD OF INSERT ON op_dead BEGIN
    INSERT INTO dead(id, kind, data, attempts, created, last_error, died)
        SELECT id, kind, coalesce(p.data, items.data), attempts, created, new.error, new.died
        FROM items LEFT JOIN payloads p ON p.rowid = items.rowid
        WHERE items.rowid IN (SELECT value FROM json_each(new.rowids)) AND state=1 ORDER BY items.rowid;
    DELETE FROM payloads WHERE rowid IN (SELECT rowid FROM items
        WHERE rowid IN (SELECT value FROM json_each(new.rowids)) AND state=1);
    DELETE FROM items WHERE rowid IN (SELECT value FROM json_each(new.rowids)) AND state=1;
END;
"""

#: after a checkpoint the WAL file is cut back to this size: a burst (or an outage of
#: retries) does not hold its disk space for good
WAL_SIZE_LIMIT = 4 * 1024 * 1024
#: space set aside next to each journal and given back when the disk fills, so that the
#: checkpoint and the deletes that free space can still run (capped at 1/16 of the disk)
RESERVE_BYTES = 1024 * 1024
_RESERVE_RETRY_S = 5.0

_APPEND = "INSERT INTO op_append(ids, kinds, kind_width, spans, blob, created) VALUES (?, ?, ?, ?, ?, ?)"
#: an item's payload, wherever it is stored (rows of earlier versions: in items.data)
_DATA = "coalesce(p.data, items.data)"
_FROM_ITEMS = "items LEFT JOIN payloads p ON p.rowid = items.rowid"
_CLAIM = (
    "UPDATE items SET state=?, owner=?, claim=?, attempts=attempts+1 WHERE rowid IN ("
    " SELECT rowid FROM items WHERE state=? AND not_before<=? ORDER BY rowid LIMIT ?)"
)
# one row for the whole claim: the metadata as a JSON array, the payloads concatenated
# in the same (aggregate) order, cut apart by their lengths
_CLAIMED = (
    f"SELECT json_group_array(json_array(items.rowid, id, kind, attempts, length({_DATA}))),"
    f" CAST(group_concat({_DATA}, '') AS BLOB) FROM {_FROM_ITEMS}"
    " WHERE claim=? AND state=1 AND owner=?"
)
_SPAN = "{:012d}{:012d}"
_ROWID, _ID = operator.itemgetter(0), operator.itemgetter(1)
_ITEM_FIELDS = operator.itemgetter(1, 2, 3, 4)  # (rowid, id, kind, data, attempts) -> item
_new_item = functools.partial(tuple.__new__, JournalItem)  # no bytecode per item


def _json_text(obj: Any) -> str:
    # JSON goes to SQLite as TEXT: from SQLite 3.45 a BLOB argument is read as JSONB
    return encode(obj).decode()

_json_decode = msgspec.json.decode


def _schema_objects(script: str) -> set[str]:
    return set(re.findall(r"CREATE (?:TABLE|INDEX|VIEW|TRIGGER) IF NOT EXISTS (\w+)", script))


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring a journal made by an older version up to this one:
    nothing to do (one read) when every object exists. Otherwise one transaction: run
    as one statement per transaction, the schema wrote ~40 WAL frames, more than a small
    disk that a journal could still use has room for. The write lock is taken first, so
    a process opening the same old file at once waits and then finds it migrated."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    if _ALL_OBJECTS <= have:
        return
    with transaction(conn):
        add_missing_columns(conn, "items", ITEMS_COLUMNS)
        run_script(conn, _SCHEMA)
        run_script(conn, _OPS_SCHEMA)  # its index on items(claim) needs the column


_ALL_OBJECTS = {"items"} | _schema_objects(_SCHEMA) | _schema_objects(_OPS_SCHEMA)

#: what items(), retrying() and recent_dead() return per row; dead rows have no backoff
#: and no owner
_ITEM_KEYS = ("id", "kind", "data", "attempts", "created", "not_before", "last_error", "owner")
_ITEM_COLS = ", ".join(_ITEM_KEYS).replace("data", _DATA)
_DEAD_COLS = "id, kind, data, attempts, created, 0, last_error, NULL"


def _dicts(rows: list[tuple], keys: tuple[str, ...] = _ITEM_KEYS) -> list[dict[str, Any]]:
    return [dict(zip(keys, r, strict=True)) for r in rows]


class SqliteJournal(Journal):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        busy_timeout_ms: int = 10_000,
        destination: str | None = None,
    ):
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        #: sidecar file whose OS lock the lease holder's process keeps (see acquire)
        self.lease_path = self.path.with_name(self.path.name + ".lease")
        self.fsync = fsync
        self.busy_timeout_ms = busy_timeout_ms
        # one connection per thread and process; a forked child opens its own
        self._db = WalHandle(self.path, per_thread=True, after_fork=self._after_fork,
                             busy_timeout_ms=busy_timeout_ms,
                             synchronous="FULL" if fsync else "NORMAL",
                             pragmas=(f"journal_size_limit={WAL_SIZE_LIMIT}",), migrate=_migrate)
        # rowids of what this process claimed: ack/retry/dead address rows by rowid, so the
        # table needs no index on id (one btree less on the append path)
        self._claims: dict[str, list[int]] = {}
        self._claims_lock = threading.Lock()
        # settle writes (ack/retry/dead) that failed, e.g. on a full disk: replayed before
        # the next operation, so claimed rows never stay in flight for a live holder
        self._unsettled: list[tuple[str, tuple]] = []
        self._reserve = Path(f"{self.path}-reserve")
        self._reserve_due: float | None = 0.0  # when to (re)make the reserve; None: in place
        self._salvage_lock = threading.RLock()
        #: what was salvaged when a damaged file was replaced (None: never)
        self.salvaged: dict[str, Any] | None = None
        #: the file refuses writes (immutable, read-only mount): claims return nothing,
        #: and the recorder copies the items into a writable fallback journal
        self.read_only = False
        self._copied_upto = 0  # items up to this rowid were copied into another journal
        self._probe_due = 0.0
        self._open_checked()
        self._probe_writable()
        #: where this journal's records go (recorded in its meta table; None: unknown)
        self.destination = self._claim_destination(destination)
        self._keep_reserve()

    # -- connections -------------------------------------------------------------------
    def _open_checked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with fork_gate:  # every SQLite call of the journal runs inside the fork gate
            self._open_checked_ungated()

    def _open_checked_ungated(self) -> None:
        try:
            conn = self._conn()
            # a cheap full read at open: a damaged page is found now, not by a claim that
            # then fails forever
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
            self._replace_corrupt(str(exc), self._db.gen)
            return
        if problems != ["ok"]:
            self._replace_corrupt("; ".join(problems), self._db.gen)

    def _replace_corrupt(self, reason: str, seen_gen: int) -> None:
        """Move the damaged file aside, start a new journal at the same path and put every
        record that can still be read from the old one into it (to be delivered again:
        the collector drops any copy it already stored, by id). ``seen_gen``: the file
        the error came from; another thread may have replaced it already."""
        with fork_gate, self._salvage_lock:
            if seen_gen != self._db.gen:
                return
            self._db.reset()  # every thread's connection to the old file is dropped
            aside = move_aside(self.path)
            log.error("journal %s is damaged (%s); moved it aside to %s and started a new journal at %s",
                      self.path, reason, aside, self.path)
            with self._claims_lock:
                self._claims.clear()  # rowids of the old file
                self._unsettled.clear()
            self._conn()
            self.salvaged = self._salvage_from(aside) | {"reason": reason}

    def _salvage_from(self, aside: Path) -> dict[str, Any]:
        from .salvage import read_salvage

        try:
            found = read_salvage(aside)
        except Exception as exc:  # salvage is best effort; the new journal works anyway
            log.error("nothing could be salvaged from %s: %s", aside, exc)
            return {"from": str(aside), "items": 0, "dead": 0, "lost": None, "problems": [str(exc)]}
        conn = self._conn()
        for start in range(0, len(found.items), 5000):
            self._write(_APPEND, self._append_params(found.items[start:start + 5000]))
        if found.dead:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO dead(id, kind, data, attempts, created, last_error, died) VALUES (?, ?, ?, ?, ?, ?, ?)",
                found.dead)
            conn.execute("COMMIT")
        report = {"from": str(aside), "items": len(found.items), "dead": len(found.dead),
                  "lost": found.lost, "header_rebuilt": found.header_rebuilt, "problems": found.problems}
        log.error("salvaged %d records (and %d dead-lettered) from %s into %s; %s",
                  len(found.items), len(found.dead), aside, self.path,
                  "; ".join(found.problems) or "nothing else was damaged")
        return report

    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def _after_fork(self) -> None:
        # in a forked child: the parent's claims and locks are not this process's
        self._claims = {}
        self._claims_lock = threading.Lock()
        self._salvage_lock = threading.RLock()
        self._unsettled = []

    def _failed(self, exc: sqlite3.Error) -> JournalError:
        """The JournalError for ``exc``; a damaged file is moved aside and salvaged first."""
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            try:
                self._replace_corrupt(str(exc), self._db.conn_gen())
            except Exception as again:  # noqa: BLE001 - reported with the original error
                log.error("journal %s is damaged and could not be replaced: %s", self.path, again)
        return JournalError(f"journal {self.path}: {exc}")

    @contextlib.contextmanager
    def _tx(self, immediate: bool = True):
        # every SQLite call of the journal runs inside the fork gate (see ForkGate)
        with fork_gate:
            with self._tx_ungated(immediate) as conn:
                yield conn

    @contextlib.contextmanager
    def _tx_ungated(self, immediate: bool):
        try:
            with transaction(self._conn(), immediate=immediate) as conn:
                yield conn
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def _claim_destination(self, destination: str | None) -> str | None:
        """Record ``destination`` in a journal that has none (a new journal, or one made
        before journals recorded it: adopted), or check it against the recorded one."""
        if self.read_only and destination is not None:
            # a file that refuses writes cannot record one: check what it holds, if anything
            recorded = self._claim_destination(None)
            if recorded is not None and recorded != destination:
                raise JournalDestinationError(
                    f"journal {self.path} belongs to {recorded}, not to {destination}")
            return destination
        if destination is None:  # only look: tools inspecting a journal change nothing
            has_meta = self._read("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'")
            if not has_meta:
                return None
            row = self._read("SELECT value FROM meta WHERE key='destination'")
            return row[0][0] if row else None
        with self._tx() as c:
            c.execute(_META_SCHEMA)
            row = c.execute("SELECT value FROM meta WHERE key='destination'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta(key, value) VALUES ('destination', ?)", (destination,))
                return destination
            if row[0] != destination:
                raise JournalDestinationError(
                    f"journal {self.path} belongs to {row[0]}, not to {destination}: records of one"
                    " destination would be delivered to the other. Give this pipeline its own"
                    f" journal (journal_path= / db_path=), or, if {row[0]} is gone for good,"
                    f" deliver or purge what waits in {self.path} and remove it"
                )
            return destination

    # -- contract ---------------------------------------------------------------------
    def append(self, items: list[tuple[str, str, bytes]]) -> None:
        if not items:
            return
        # One statement for the whole batch: sqlite3 releases and retakes the GIL around
        # every step, and executemany steps once per row, so with one CPU-bound thread in
        # the application each row could wait out a switch interval (a 5,000-row append
        # took seconds).
        params = self._append_params(items)
        gen = self._db.gen
        try:
            self._write(_APPEND, params)
        except JournalError:
            if gen == self._db.gen:
                raise
            self._write(_APPEND, params)  # the file was damaged and replaced: into the new one

    @staticmethod
    def _append_params(items: list[tuple[str, str, bytes]]) -> tuple:
        """The batch as six parameters, built with C loops only (no bytecode per row):
        the ids as a JSON array of strings (json_each hands each one over without parsing
        again), the kinds padded to one width, each payload's offset and length in the
        blob as 12 digits each, and the payloads as one blob cut with substr() in SQL
        (this SQLite may predate unhex()). Kinds and spans go as BLOBs: substr() of a
        blob indexes bytes, of a text counts characters from the start (O(n) per row)."""
        ids, kinds, datas = zip(*items, strict=True)
        kinds_b = list(map(str.encode, kinds))
        width = max(map(len, set(kinds_b)))
        lens = list(map(len, datas))
        spans = "".join(map(_SPAN.format, itertools.accumulate(lens, initial=1), lens)).encode()
        kinds_blob = b"".join(map(bytes.ljust, kinds_b, itertools.repeat(width)))
        return _json_text(ids), kinds_blob, width, spans, b"".join(datas), time.time()

    def claim(self, n: int, owner: str) -> list[JournalItem]:
        # two statements, no explicit transaction (each is atomic on its own): mark the
        # rows with a claim token, then read them back as ONE aggregated row, so the cost
        # in GIL hand-overs does not grow with the batch
        if self.read_only and not self._writable_again():
            return []  # its items were copied into a writable journal and go from there
        self._replay()
        token = random.getrandbits(62)
        self._write(_CLAIM, (INFLIGHT, owner, token, READY, time.time(), n))
        meta, blob = self._read(_CLAIMED, (token, owner))[0]
        rows = _json_decode(meta) if meta else []
        if not rows:
            return []
        # C loops only from here (the dispatcher shares the GIL with the application):
        # cut the payloads in aggregate order, then sort by rowid (aggregate order is
        # unspecified; claims go oldest first)
        rowids, ids, kinds, attempts, lens = zip(*rows, strict=True)
        blob = blob or b""
        cuts = map(slice, itertools.accumulate(lens, initial=0), itertools.accumulate(lens))
        out = sorted(zip(rowids, ids, kinds, map(blob.__getitem__, cuts), attempts, strict=True))
        rowids, ids = list(map(_ROWID, out)), list(map(_ID, out))
        with self._claims_lock:
            if len(set(ids)) == len(ids) and self._claims.keys().isdisjoint(ids):
                self._claims.update(zip(ids, map(list, zip(rowids, strict=True)), strict=True))
            else:  # an id twice in the journal: keep every rowid under it
                for rowid, id_ in zip(rowids, ids, strict=True):
                    self._claims.setdefault(id_, []).append(rowid)
        return list(map(_new_item, map(_ITEM_FIELDS, out)))

    def _take_rowids(self, ids: list[str]) -> str:
        out: list[int] = []
        with self._claims_lock:
            for id_ in ids:
                out.extend(self._claims.pop(id_, ()))
        return _json_text(out) if out else ""

    def ack(self, ids: list[str]) -> None:
        rowids = self._take_rowids(ids)
        if rowids:
            self._settle("INSERT INTO op_ack(rowids) VALUES (?)", (rowids,))

    def retry(self, ids: list[str], error: str, not_before: float) -> None:
        rowids = self._take_rowids(ids)
        if rowids:
            self._settle("INSERT INTO op_retry(rowids, not_before, error) VALUES (?, ?, ?)",
                         (rowids, not_before, error))

    def dead(self, ids: list[str], error: str) -> None:
        rowids = self._take_rowids(ids)
        if rowids:
            self._settle("INSERT INTO op_dead(rowids, error, died) VALUES (?, ?, ?)",
                         (rowids, error, time.time()))

    def _settle(self, sql: str, params: tuple) -> None:
        """Settle claimed rows; when the journal cannot write now (a full disk), keep the
        write and replay it before the next operation instead of raising: the rows stay
        in flight meanwhile, and are settled as soon as a write succeeds."""
        with self._claims_lock:
            self._unsettled.append((sql, params))
        try:
            self._replay()
        except JournalError as exc:
            log.warning("journal %s: %d settle writes wait for the journal to accept writes again: %s",
                        self.path, len(self._unsettled), exc)

    def _replay(self) -> None:
        while True:
            with self._claims_lock:
                if not self._unsettled:
                    return
                sql, params = self._unsettled[0]
            self._write(sql, params)
            with self._claims_lock:
                if self._unsettled and self._unsettled[0] == (sql, params):
                    self._unsettled.pop(0)

    def requeue(self, ids: list[str] | None = None) -> int:
        where = "" if ids is None else " WHERE id=?"
        # requeued rows keep their payload in items.data, as rows of earlier versions do
        move = f"INSERT INTO items(id, kind, data, created) SELECT id, kind, data, created FROM dead{where} ORDER BY rowid"
        with self._tx() as c:
            if ids is None:
                c.execute(move)
                return c.execute("DELETE FROM dead").rowcount
            n = 0
            for i in ids:
                c.execute(move, (i,))
                n += c.execute("DELETE FROM dead WHERE id=?", (i,)).rowcount
            return n

    def purge(self, state: str | int, older_than: float | None = None) -> int:
        code = state_code(state)
        table, cond, params = ("dead", "1", []) if code == DEAD else ("items", "state=?", [code])
        if older_than is not None:
            cond += " AND created<?"
            params.append(older_than)
        with self._tx() as c:
            n = c.execute(f"DELETE FROM {table} WHERE {cond}", params).rowcount
            if table == "items" and n:
                c.execute("DELETE FROM payloads WHERE rowid NOT IN (SELECT rowid FROM items)")
        if n >= 1000:  # a big delete: give the WAL it wrote back to the disk now
            self.checkpoint()
        return n

    def checkpoint(self) -> None:
        """Copy the WAL into the database and cut the WAL file to zero bytes (best effort:
        a reader in another process can hold it back)."""
        with fork_gate, contextlib.suppress(sqlite3.Error):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def items(self, state: str | int, limit: int = 100) -> list[dict[str, Any]]:
        code = state_code(state)
        if code == DEAD:
            rows = self._read(f"SELECT {_DEAD_COLS} FROM dead ORDER BY rowid LIMIT ?", (limit,))
        else:
            rows = self._read(
                f"SELECT {_ITEM_COLS} FROM {_FROM_ITEMS} WHERE state=? ORDER BY not_before, items.rowid LIMIT ?",
                (code, limit),
            )
        return _dicts(rows)

    def retrying(self, limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
        n = self._read("SELECT count(*) FROM items WHERE state=0 AND not_before>0")[0][0]
        rows = self._read(
            f"SELECT {_ITEM_COLS} FROM {_FROM_ITEMS} WHERE state=0 AND not_before>0"
            " ORDER BY not_before, items.rowid LIMIT ?",
            (limit,),
        )
        return n, _dicts(rows)

    def recent_dead(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._read(f"SELECT {_DEAD_COLS}, died FROM dead ORDER BY rowid DESC LIMIT ?", (limit,))
        return _dicts(rows, (*_ITEM_KEYS, "died"))

    def has_pending(self) -> bool:
        # items copied into another journal (this one is read-only) are pending there
        return bool(self._read("SELECT EXISTS(SELECT 1 FROM items WHERE rowid > ?)", (self._copied_upto,))[0][0])

    def stats(self) -> dict[str, Any]:
        # one read transaction: a snapshot, so an ack between two reads cannot make the
        # counts disagree (an item both in flight and delivered, or in neither)
        with self._tx(immediate=False) as c:
            counts = dict(c.execute("SELECT state, count(*) FROM items WHERE rowid > ? GROUP BY state",
                                    (self._copied_upto,)).fetchall())
            counts[DEAD] = c.execute("SELECT count(*) FROM dead").fetchone()[0]
            counters = dict(c.execute("SELECT name, value FROM counters").fetchall())
            oldest = c.execute("SELECT min(created) FROM items WHERE state=0 AND rowid > ?",
                               (self._copied_upto,)).fetchone()[0]
            nxt = c.execute("SELECT min(not_before) FROM items WHERE state=0 AND not_before>0").fetchone()[0]
            lease = c.execute("SELECT holder, expires FROM lease WHERE name=?", (_LEASE,)).fetchall()
        return {
            "ready": counts.get(READY, 0),
            "inflight": counts.get(INFLIGHT, 0),
            "dead": counts.get(DEAD, 0),
            "delivered": counters.get("delivered", 0),
            "retried": counters.get("retried", 0),
            "oldest_ready_created": oldest,
            "next_not_before": nxt,
            "lease_holder": lease[0][0] if lease else None,
            "lease_expires": lease[0][1] if lease else None,
        }

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with fork_gate:
                return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        """One statement in autocommit: atomic on its own (triggers included), and a
        write statement takes the write lock up front, waiting out busy_timeout. On a
        full disk: free the reserve, checkpoint and truncate the WAL, try once more."""
        try:
            with fork_gate:
                return self._write_ungated(sql, params)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def _write_ungated(self, sql: str, params: tuple) -> sqlite3.Cursor:
        try:
            cur = self._conn().execute(sql, params)
        except sqlite3.OperationalError as exc:
            if _is_read_only(exc):
                self._now_read_only(exc)
            if not _is_full(exc) or not self._make_room():
                raise
            cur = self._conn().execute(sql, params)
        if self._reserve_due is not None and time.monotonic() >= self._reserve_due:
            self._keep_reserve()
        return cur

    # -- read-only files --------------------------------------------------------------------
    def _probe_writable(self) -> bool:
        """A write that changes nothing: does the file take writes (now)?"""
        try:
            with fork_gate:
                self._conn().execute("UPDATE counters SET value=value WHERE name='retried'")
        except sqlite3.OperationalError as exc:
            if _is_read_only(exc):
                self._now_read_only(exc)
                return False
            return True  # another refusal (a full disk...): handled where it happens
        except sqlite3.Error:
            return True
        if self.read_only:
            self.read_only = False
            log.warning("journal %s takes writes again", self.path)
            self._forget_copied()
        return True

    def _writable_again(self) -> bool:
        if time.monotonic() < self._probe_due:
            return False
        self._probe_due = time.monotonic() + _RESERVE_RETRY_S
        return self._probe_writable()

    def _now_read_only(self, exc: sqlite3.Error) -> None:
        if not self.read_only:
            log.error("journal %s refuses writes (%s): its items will be delivered from a copy"
                      " in the fallback journal", self.path, exc)
        self.read_only = True
        self._probe_due = time.monotonic() + _RESERVE_RETRY_S

    def copy_out(self) -> tuple[list[tuple[str, str, bytes]], int]:
        """The items not copied yet (ready or in flight), oldest first, and the rowid to
        pass to :meth:`mark_copied` once they are stored elsewhere. Reads only."""
        rows = self._read(f"SELECT items.rowid, id, kind, {_DATA} FROM {_FROM_ITEMS}"
                          " WHERE items.rowid > ? ORDER BY items.rowid", (self._copied_upto,))
        upto = rows[-1][0] if rows else self._copied_upto
        return [(r[1], r[2], bytes(r[3])) for r in rows], upto

    def mark_copied(self, upto: int) -> None:
        """Items up to rowid ``upto`` are stored in another journal: this one no longer
        counts them as pending, and deletes them once it takes writes again."""
        self._copied_upto = max(self._copied_upto, upto)

    def _forget_copied(self) -> None:
        if not self._copied_upto:
            return
        upto, self._copied_upto = self._copied_upto, 0
        try:
            with self._tx() as c:
                c.execute("DELETE FROM payloads WHERE rowid <= ?", (upto,))
                n = c.execute("DELETE FROM items WHERE rowid <= ?", (upto,)).rowcount
        except JournalError as exc:
            self._copied_upto = upto
            log.warning("journal %s: the copied items could not be removed yet: %s", self.path, exc)
            return
        log.warning("journal %s: removed %d items that were delivered from their copy", self.path, n)

    # -- full disks ------------------------------------------------------------------------
    def _make_room(self) -> bool:
        """The disk is full: give back the reserve file (space set aside at open for this
        moment), then copy the WAL into the database and cut the WAL to nothing, so the
        writes that free space (ack, retry, dead) can run. True when anything was freed."""
        freed = False
        try:
            self._reserve.unlink()
            freed = True
            log.warning("journal %s: disk full; released the %s reserve to keep delivering",
                        self.path, self._reserve)
        except FileNotFoundError:
            pass
        self._reserve_due = time.monotonic() + _RESERVE_RETRY_S  # put it back once space returns
        try:
            row = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            freed = freed or (row is not None and row[0] == 0)
        except sqlite3.Error as exc:
            log.warning("journal %s: checkpoint on a full disk failed: %s", self.path, exc)
        return freed

    def _keep_reserve(self) -> None:
        """Set aside RESERVE_BYTES next to the journal while the disk has room for it
        (looked at again every few seconds while it cannot be made)."""
        self._reserve_due = None
        if self._reserve.exists():
            return
        try:
            st = os.statvfs(self.path.parent)
            size = min(RESERVE_BYTES, st.f_blocks * st.f_frsize // 16)
            if st.f_bavail * st.f_frsize < 4 * size:
                self._reserve_due = time.monotonic() + _RESERVE_RETRY_S  # not yet
                return
            fd = os.open(self._reserve, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"\0" * size)  # real blocks, not a sparse hole
            finally:
                os.close(fd)
        except FileExistsError:
            pass
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._reserve.unlink()
            self._reserve_due = time.monotonic() + _RESERVE_RETRY_S
            log.debug("journal %s: no reserve file (%s)", self.path, exc)

    def acquire(self, holder: str, lease_s: float) -> bool:
        # the timed lease (a row with an expiry) decides between live holders, a hung one
        # included; the OS lock on the sidecar file tells a dead holder at once: the kernel
        # drops it when its process dies, so a new process need not wait out the lease
        os_lease = _os_lease(self.lease_path)
        os_held = os_lease.take(holder)
        now = time.time()
        try:
            with self._tx() as c:
                row = c.execute("SELECT holder, expires FROM lease WHERE name=?", (_LEASE,)).fetchone()
                if row is not None and row[0] != holder:
                    dead = os_held and not os_lease.holds(row[0]) and not _holder_alive(row[0])
                    if row[1] > now and not dead:
                        os_lease.drop(holder)
                        return False
                    # a dead holder's claims got no answer: they must not use up attempts
                    undo = ", attempts=max(attempts-1, 0)" if dead else ""
                    n = c.execute(
                        f"UPDATE items SET state=0, owner=NULL{undo} WHERE state=1 AND owner=?", (row[0],)
                    ).rowcount
                    if n and dead:
                        log.warning("lease of %s taken over before it expired: its process died; %d"
                                    " in-flight items returned to ready (their attempt not counted)", row[0], n)
                    elif n:
                        log.warning("lease of %s expired: %d in-flight items returned to ready", row[0], n)
                if row is None:
                    # no lease row: whoever held claims before is gone (e.g. lease released)
                    c.execute(
                        "UPDATE items SET state=0, owner=NULL, attempts=max(attempts-1, 0)"
                        " WHERE state=1 AND owner!=?", (holder,),
                    )
                c.execute(
                    "INSERT OR REPLACE INTO lease(name, holder, expires) VALUES (?, ?, ?)",
                    (_LEASE, holder, now + lease_s),
                )
                return True
        except BaseException:
            os_lease.drop(holder)
            raise

    def release(self, holder: str) -> None:
        try:
            with self._tx() as c:
                c.execute("UPDATE items SET state=0, owner=NULL WHERE state=1 AND owner=?", (holder,))
                c.execute("DELETE FROM lease WHERE name=? AND holder=?", (_LEASE, holder))
            with self._claims_lock:
                self._claims.clear()
        finally:
            _os_lease(self.lease_path).drop(holder)

    def close(self) -> None:
        self._db.close()


class _OsLease:
    """The kernel's side of the lease: an ``fcntl`` write lock on ``<journal>.lease``,
    taken by the process whose dispatcher holds the lease row and dropped by the kernel
    when that process dies (SIGKILL, OOM kill, power cut of a container...). POSIX locks
    belong to a process, are not inherited across fork, and are all released when the
    process closes *any* descriptor of the file, so one descriptor per file and process
    is kept open here for the life of the process, with the holders of this process that
    use it."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._holders: set[str] = set()
        self._lock = threading.Lock()

    def take(self, holder: str) -> bool:
        """True when this process holds the lock (now or already); never blocks."""
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by another live process (or the file cannot be made)
                self._holders.discard(holder)
                return False
            self._holders.add(holder)
            return True

    def holds(self, holder: str) -> bool:
        with self._lock:
            return holder in self._holders

    def drop(self, holder: str) -> None:
        with self._lock:
            self._holders.discard(holder)
            if not self._holders and self._fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)


_os_leases: dict[Path, _OsLease] = {}
_os_leases_lock = threading.Lock()
_os_leases_pid = os.getpid()


def _os_lease(path: Path) -> _OsLease:
    global _os_leases, _os_leases_lock, _os_leases_pid
    if _os_leases_pid != os.getpid():
        # a forked child holds none of its parent's locks; the inherited descriptors are
        # left open: closing one would not touch the parent, but nothing needs them
        _os_leases, _os_leases_lock, _os_leases_pid = {}, threading.Lock(), os.getpid()
    with _os_leases_lock:
        lease = _os_leases.get(path)
        if lease is None:
            lease = _os_leases[path] = _OsLease(path)
        return lease


def _holder_alive(holder: str) -> bool:
    """False only when ``holder`` (``host:pid:tag``, as dispatchers name themselves) names
    a process of this host that no longer runs (or is a zombie). Anything else counts as
    alive and keeps the timed lease: a holder on another host, a name of another form, a
    pid reused by an unrelated process (the lease then expires as it always did)."""
    parts = holder.split(":")
    if len(parts) < 3 or parts[0] != os.uname().nodename or not parts[1].isdigit():
        return True
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True


def check_journal_file(path: str | os.PathLike[str]) -> None:
    """Raise JournalError unless ``path`` is an existing journal file. Opens it read-only,
    so nothing is created, migrated or moved aside (tools inspecting a file a user named
    must not "repair" a file that was never a journal)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise JournalError(f"no journal at {p}: the file does not exist")
    if p.is_dir():
        raise JournalError(f"{p} is a directory, not a journal file")
    try:
        tables = read_tables(p)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
            raise JournalError(f"cannot read journal {p}: {exc}") from exc
        raise JournalError(f"{p} is not a usageledger journal (not an SQLite database)") from exc
    missing = {"items", "dead", "counters", "lease"} - tables
    if missing:
        raise JournalError(
            f"{p} is an SQLite database but not a usageledger journal"
            f" (no table {', '.join(sorted(missing))})"
        )


def _is_read_only(exc: sqlite3.Error) -> bool:
    """The file refuses writes: opened read-only (immutable, read-only mount), or made so
    while open, which SQLite reports as an I/O error (the kernel answers EPERM/EROFS)."""
    msg = str(exc).lower()
    return "readonly" in msg or "read-only" in msg or "disk i/o error" in msg


def _is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


_is_corruption = is_corruption
