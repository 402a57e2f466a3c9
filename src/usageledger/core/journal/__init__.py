"""Journals: where accepted records wait until a sink has them."""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    DEAD,
    INFLIGHT,
    READY,
    Journal,
    JournalDestinationError,
    JournalError,
    JournalItem,
    JournalUnavailableError,
)
from .memory import MemoryJournal
from .sqlite import SqliteJournal

__all__ = [
    "Journal", "JournalItem", "JournalError", "JournalDestinationError", "JournalUnavailableError",
    "MemoryJournal", "SqliteJournal", "READY", "INFLIGHT",
    "DEAD", "open_journal", "is_journal_url", "fallback_file_name", "journal_stream",
    "check_journal_url", "JOURNAL_URL_SCHEMES",
]

#: URL schemes ``open_journal`` takes (a plain path is an SQLite journal file)
JOURNAL_URL_SCHEMES = ("redis", "rediss", "unix", "sqlite", "memory")


def is_journal_url(target: str | os.PathLike[str]) -> bool:
    return isinstance(target, str) and "://" in target


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in JOURNAL_URL_SCHEMES:
        raise ValueError(
            f"journal URL {url!r} has an unknown scheme {scheme!r}: use one of "
            f"{', '.join(s + '://' for s in JOURNAL_URL_SCHEMES)} or a file path"
        )
    return scheme


def check_journal_url(url: str) -> str:
    """``url`` if ``open_journal`` can take it, else ValueError naming the problem."""
    scheme = _scheme(url)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import parse_journal_url

        parse_journal_url(url)
    elif scheme == "sqlite" and not url[len("sqlite://"):]:
        raise ValueError(f"journal URL {url!r} names no file: use sqlite:///path/to/queue.db")
    return url


def open_journal(target: str | os.PathLike[str], *, fsync: bool = False) -> Journal:
    """A journal for a file path (SQLite) or a URL: ``redis://host:port/db?stream=NAME``
    (:class:`~usageledger.journal.redis.RedisJournal`), ``sqlite:///path``, ``memory://``."""
    if not is_journal_url(target):
        return SqliteJournal(target, fsync=fsync)
    url = check_journal_url(str(target))
    scheme = _scheme(url)
    if scheme == "memory":
        return MemoryJournal()
    if scheme == "sqlite":
        return SqliteJournal(url[len("sqlite://"):], fsync=fsync)
    from .redis import RedisJournal

    return RedisJournal(url, fsync=fsync)


def fallback_file_name(target: str | os.PathLike[str]) -> str:
    """The file name a local fallback journal takes for ``target``: the journal file's own
    name, or ``<stream>.journal`` for a Redis stream."""
    if is_journal_url(target) and _scheme(str(target)) in ("redis", "rediss", "unix"):
        from .redis import parse_journal_url

        return parse_journal_url(str(target))[1].replace("/", "_") + ".journal"
    if is_journal_url(target):
        return Path(str(target).split("://", 1)[1] or "memory").name or "memory.journal"
    return Path(target).name


def journal_stream(url: str, suffix: str) -> str:
    """``url`` with its stream named ``<stream>.<suffix>``: one stream per destination when
    several pipelines share one Redis journal setting (each stream has one sink)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    from .redis import parse_journal_url

    check_journal_url(url)
    if _scheme(url) not in ("redis", "rediss", "unix"):
        raise ValueError(f"journal URL {url!r} is not a Redis URL: a stream name needs redis://")
    server, stream = parse_journal_url(url)
    parts = urlsplit(server)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("stream", f"{stream}.{suffix}")]
    return urlunsplit(parts._replace(query=urlencode(query)))
