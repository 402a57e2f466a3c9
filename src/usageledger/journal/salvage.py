"""Reading what can still be read from a damaged SQLite journal.

A corrupt page makes every query that touches it fail, so one bad page among thousands
used to make the whole journal undeliverable. Here rows are read in rowid order, and a
read that fails is retried past the bad stretch (seeking further ahead, then back by
bisection to the first rowid that reads again), so every row on a sound page is kept.
A damaged file header (the first 100 bytes) is replaced by a sound one on a copy.

The salvaged rows are delivered again from a new journal; any of them that the collector
already stored is dropped there by its id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Salvage", "read_salvage"]

_BATCH = 200
_PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)


@dataclass
class Salvage:
    """What was read back from a damaged journal."""

    #: (id, kind, data) of every ready or in-flight item that could be read, oldest first
    items: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: (id, kind, data, attempts, created, last_error, died) of dead-lettered items
    dead: list[tuple] = field(default_factory=list)
    #: rows found but without a readable payload (their page is damaged)
    lost: int = 0
    #: True when the file header had to be rebuilt to read anything
    header_rebuilt: bool = False
    problems: list[str] = field(default_factory=list)


def read_salvage(path: str | os.PathLike[str]) -> Salvage:
    """Every readable record of the journal file at ``path`` (never written to: a
    damaged header is rebuilt on a copy)."""
    p = Path(path)
    out = Salvage()
    with _readable(p, out) as conn:
        if conn is None:
            return out
        out.items, out.lost = _read_items(conn, out.problems)
        out.dead = [r[1:] for r in _scan(conn, "dead", "id, kind, data, attempts, created, last_error, died",
                                         out.problems) if isinstance(r[3], bytes)]
    return out


@contextlib.contextmanager
def _readable(p: Path, out: Salvage) -> Iterator[sqlite3.Connection | None]:
    with tempfile.TemporaryDirectory(prefix="usageledger-salvage-") as tmp:
        # work on a copy (with its WAL): reading a WAL database may write its -shm and
        # checkpoint on close, and the file set aside must stay as it was found
        copy = Path(tmp) / "journal.db"
        shutil.copyfile(p, copy)
        if os.path.exists(f"{p}-wal"):
            shutil.copyfile(f"{p}-wal", f"{copy}-wal")
        conn = _open_if_schema(copy)
        if conn is None:
            header = p.open("rb").read(100)
            for page_size in _PAGE_SIZES:
                _write_header(copy, page_size)
                conn = _open_if_schema(copy)
                if conn is not None:
                    out.header_rebuilt = True
                    out.problems.append(f"file header damaged ({header[:16]!r}); rebuilt with page size {page_size}")
                    break
        if conn is None:
            out.problems.append("no table of a journal could be read, even with a rebuilt header")
        try:
            yield conn
        finally:
            if conn is not None:
                conn.close()


def _open_if_schema(path: Path) -> sqlite3.Connection | None:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except (sqlite3.Error, ValueError):
            conn.close()
            return None
    except sqlite3.Error:
        return None
    if "items" not in names:
        conn.close()
        return None
    return conn


def _write_header(path: Path, page_size: int) -> None:
    """Put a sound header for ``page_size`` on ``path``: taken from a new database of
    that page size, with the page count taken from the file's size."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "h.db"
        c = sqlite3.connect(fresh, isolation_level=None)
        c.execute(f"PRAGMA page_size={page_size}")
        c.execute("PRAGMA journal_mode=WAL")  # read/write versions 2, as our journals
        c.execute("CREATE TABLE t(x)")
        c.close()
        header = bytearray(fresh.read_bytes()[:100])
    pages = os.path.getsize(path) // page_size
    header[24:28] = (1).to_bytes(4, "big")  # change counter == version-valid-for:
    header[92:96] = (1).to_bytes(4, "big")  # the page count below is trusted
    header[28:32] = pages.to_bytes(4, "big")
    header[32:40] = bytes(8)  # no free-list: its trunk page is unknown
    header[40:44] = (1).to_bytes(4, "big")  # schema cookie
    with open(path, "r+b") as f:
        f.write(header)


def _read_items(conn: sqlite3.Connection, problems: list[str]) -> tuple[list[tuple[str, str, bytes]], int]:
    has_payloads = bool(conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name='payloads'").fetchone()[0])
    rows = [r for r in _scan(conn, "items", "id, kind, data", problems)
            if isinstance(r[1], str) and isinstance(r[2], str)]
    out: list[tuple[str, str, bytes]] = []
    lost = 0
    for rowid, id_, kind, inline in rows:
        data = inline if isinstance(inline, bytes) and inline else None
        if data is None and has_payloads:
            data = _one(conn, "SELECT data FROM payloads WHERE rowid=?", rowid)
        if isinstance(data, bytes) and data:
            out.append((id_, kind, data))
        else:
            lost += 1
    if lost:
        problems.append(f"{lost} items whose payload is on a damaged page")
    return out, lost


def _one(conn: sqlite3.Connection, sql: str, *params: object) -> object:
    try:
        row = conn.execute(sql, params).fetchone()
    except (sqlite3.Error, ValueError):
        return None
    return None if row is None else row[0]


def _scan(conn: sqlite3.Connection, table: str, cols: str, problems: list[str]) -> list[tuple]:
    """(rowid, *cols) of every row of ``table`` that reads, in rowid order."""
    def seek(after: int, limit: int) -> list[tuple]:
        return conn.execute(f"SELECT rowid, {cols} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                            (after, limit)).fetchall()

    top = _one(conn, f"SELECT max(rowid) FROM {table}")
    if not isinstance(top, int):
        pages = _one(conn, "PRAGMA page_count")
        top = (pages if isinstance(pages, int) else 1 << 20) * 500  # rows per page, generously
    out: list[tuple] = []
    last = -(1 << 63)
    skipped = 0
    while last < top:
        try:
            rows = seek(last, _BATCH)
        except (sqlite3.Error, ValueError):
            rows = _one_at_a_time(seek, last)
            if rows is None:  # cannot read past `last`: find where reading works again
                resume = _past_damage(seek, last, top)
                if resume is None:
                    skipped += 1
                    break
                skipped += 1
                last = resume
                continue
        if not rows:
            break
        out.extend(rows)
        last = rows[-1][0]
    if skipped:
        problems.append(f"{table}: {skipped} damaged stretch(es) skipped")
    return out


def _one_at_a_time(seek: Callable[[int, int], list[tuple]], last: int) -> list[tuple] | None:
    try:
        return seek(last, 1)
    except (sqlite3.Error, ValueError):
        return None


def _past_damage(seek: Callable[[int, int], list[tuple]], bad: int, top: int) -> int | None:
    """The smallest ``after`` > ``bad`` from which a seek reads again (bisection between
    the last failing position and the first found working), or None."""
    step = 1
    good = None
    while bad + step <= top:
        if _one_at_a_time(seek, bad + step) is not None:
            good = bad + step
            break
        step *= 2
    if good is None:
        return None
    lo = bad + step // 2 if step > 1 else bad  # fails (or is `bad`)
    while good - lo > 1:
        mid = (lo + good) // 2
        if _one_at_a_time(seek, mid) is not None:
            good = mid
        else:
            lo = mid
    return good
