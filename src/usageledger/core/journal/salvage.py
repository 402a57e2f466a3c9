"""Reading what can still be read from a damaged SQLite journal (the reading itself, past
damaged pages and a damaged header, is :mod:`usageledger._sqlite_salvage`).

The salvaged rows are delivered again from a new journal; any of them that the collector
already stored is dropped there by its id.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

from .._sqlite_salvage import open_damaged, read_one, scan_rows

__all__ = ["Salvage", "read_salvage"]


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
    out = Salvage()
    with open_damaged(path, "items") as damaged:
        out.header_rebuilt, out.problems = damaged.header_rebuilt, damaged.problems
        conn = damaged.conn
        if conn is None:
            return out
        out.items, out.lost = _read_items(conn, out.problems)
        out.dead = [r[1:] for r in scan_rows(conn, "dead", "id, kind, data, attempts, created, last_error, died",
                                             out.problems) if isinstance(r[3], bytes)]
    return out


def _read_items(conn: sqlite3.Connection, problems: list[str]) -> tuple[list[tuple[str, str, bytes]], int]:
    has_payloads = bool(conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name='payloads'").fetchone()[0])
    rows = [r for r in scan_rows(conn, "items", "id, kind, data", problems)
            if isinstance(r[1], str) and isinstance(r[2], str)]
    out: list[tuple[str, str, bytes]] = []
    lost = 0
    for rowid, id_, kind, inline in rows:
        data = inline if isinstance(inline, bytes) and inline else None
        if data is None and has_payloads:
            data = read_one(conn, "SELECT data FROM payloads WHERE rowid=?", rowid)
        if isinstance(data, bytes) and data:
            out.append((id_, kind, data))
        else:
            lost += 1
    if lost:
        problems.append(f"{lost} items whose payload is on a damaged page")
    return out, lost
