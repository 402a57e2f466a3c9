"""Reading what can still be read from a damaged SQLite file (a journal, a storage file).

A corrupt page makes every query that touches it fail, so one bad page among thousands
would make the whole file unreadable. Here rows are read in rowid order, and a read that
fails is retried past the bad stretch (seeking further ahead, then back by bisection to
the first rowid that reads again), so every row on a sound page is kept. A damaged file
header (the first 100 bytes) is replaced by a sound one on a copy: the damaged file itself
is never written to.
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

__all__ = ["Damaged", "open_damaged", "scan_rows", "iter_rows", "read_one"]

_BATCH = 200
_PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)


@dataclass
class Damaged:
    """A read connection to a copy of a damaged file (None: not even ``table`` reads)."""

    conn: sqlite3.Connection | None
    #: True when the file header had to be rebuilt to read anything
    header_rebuilt: bool = False
    problems: list[str] = field(default_factory=list)

    def tables(self) -> set[str]:
        """The tables whose entry in the schema reads."""
        if self.conn is None:
            return set()
        try:
            return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except (sqlite3.Error, ValueError):
            return set()


@contextlib.contextmanager
def open_damaged(path: str | os.PathLike[str], table: str) -> Iterator[Damaged]:
    """The file at ``path`` (with its WAL) copied aside and opened for reading; ``table``
    is a table the file must have (its header is rebuilt on the copy when that is what
    keeps the schema from reading)."""
    p = Path(path)
    with tempfile.TemporaryDirectory(prefix="usageledger-salvage-") as tmp:
        # work on a copy (with its WAL): reading a WAL database may write its -shm and
        # checkpoint on close, and the file set aside must stay as it was found
        copy = Path(tmp) / p.name
        shutil.copyfile(p, copy)
        if os.path.exists(f"{p}-wal"):
            shutil.copyfile(f"{p}-wal", f"{copy}-wal")
        out = Damaged(_open_if_schema(copy, table))
        if out.conn is None:
            header = p.open("rb").read(100)
            for page_size in _PAGE_SIZES:
                _write_header(copy, page_size)
                out.conn = _open_if_schema(copy, table)
                if out.conn is not None:
                    out.header_rebuilt = True
                    out.problems.append(f"file header damaged ({header[:16]!r}); rebuilt with page size {page_size}")
                    break
        if out.conn is None:
            out.problems.append(f"no table {table!r} could be read, even with a rebuilt header")
        try:
            yield out
        finally:
            if out.conn is not None:
                out.conn.close()


def _open_if_schema(path: Path, table: str) -> sqlite3.Connection | None:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except (sqlite3.Error, ValueError):
            conn.close()
            return None
    except sqlite3.Error:
        return None
    if table not in names:
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
        c.execute("PRAGMA journal_mode=WAL")  # read/write versions 2, as our files
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


def read_one(conn: sqlite3.Connection, sql: str, *params: object) -> object:
    """The first column of the first row, or None (also when the read fails)."""
    try:
        row = conn.execute(sql, params).fetchone()
    except (sqlite3.Error, ValueError):
        return None
    return None if row is None else row[0]


def scan_rows(conn: sqlite3.Connection, table: str, cols: str, problems: list[str]) -> list[tuple]:
    """(rowid, *cols) of every row of ``table`` (a rowid table) that reads, in rowid order."""
    return [row for rows in iter_rows(conn, table, cols, problems) for row in rows]


def iter_rows(conn: sqlite3.Connection, table: str, cols: str, problems: list[str]) -> Iterator[list[tuple]]:
    """:func:`scan_rows` in batches, for tables too large to hold at once."""
    def seek(after: int, limit: int) -> list[tuple]:
        return conn.execute(f"SELECT rowid, {cols} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                            (after, limit)).fetchall()

    top = read_one(conn, f"SELECT max(rowid) FROM {table}")
    if not isinstance(top, int):
        pages = read_one(conn, "PRAGMA page_count")
        top = (pages if isinstance(pages, int) else 1 << 20) * 500  # rows per page, generously
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
        yield rows
        last = rows[-1][0]
    if skipped:
        problems.append(f"{table}: {skipped} damaged stretch(es) skipped")


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
