"""Logging set-up for the ``usageledger`` logger (never the root logger) and body logging
with redaction.

Log files belong to their owners: a ``PersistentDelivery`` configured with ``log_file``
gets that file for the records of its own threads (its pipeline's writer, dispatcher and
senders are named after it) and of the calls it tags with its name; the records of
another owner never go there. Records that belong to no owner (pricing, storage opened
by hand, ...) go to every configured file, as they always did."""

from __future__ import annotations

import itertools
import logging
import logging.handlers
import os
import threading
from pathlib import Path
from typing import Any

from .redact import redact, redact_headers, redact_url

__all__ = ["configure_logging", "release_logging", "new_owner", "OWNER", "log_body"]

#: the ``extra`` key naming a record's owner when the thread name does not
OWNER = "usageledger_owner"
_owners: set[str] = set()
_owners_lock = threading.Lock()
_numbers = itertools.count(1)


def new_owner(prefix: str) -> str:
    """A new owner name, ``prefix-N``; threads named ``prefix-N-...`` log as this owner."""
    name = f"{prefix}-{next(_numbers)}"
    with _owners_lock:
        _owners.add(name)
    return name


def owner_of(record: logging.LogRecord) -> str | None:
    owner = record.__dict__.get(OWNER)
    if owner is not None:
        return owner
    thread = record.threadName or ""
    for name in tuple(_owners):
        if thread.startswith(name) and thread[len(name):len(name) + 1] == "-":
            return name
    return None


class _OwnerFilter(logging.Filter):
    """Lets through the records of this file's owners and those of no owner."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: set[str] = set()
        self.everyone = False  # configured without an owner: the file takes every record

    def filter(self, record: logging.LogRecord) -> bool:
        if self.everyone:
            return True
        owner = owner_of(record)
        return owner is None or owner in self.owners

log = logging.getLogger("usageledger")
body_log = logging.getLogger("usageledger.bodies")


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Log files can name customers: created 0600."""

    def _open(self):  # type: ignore[override]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, self.mode, encoding=self.encoding)


def configure_logging(
    log_file: str | os.PathLike[str] | None, log_level: str | int = "INFO", owner: str | None = None
) -> None:
    """Set the level of the ``usageledger`` logger and add a file handler for ``log_file``
    once (one handler per file, however many owners share it). With ``owner`` (from
    :func:`new_owner`) the file takes that owner's records and those of no owner; without,
    it takes every record."""
    log.setLevel(log_level)
    if log_file is None:
        return
    path = str(Path(log_file).expanduser().resolve())
    handler = next((h for h in log.handlers
                    if isinstance(h, logging.FileHandler) and h.baseFilename == path), None)
    if handler is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = _PrivateRotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_OwnerFilter())
        log.addHandler(handler)
    for f in handler.filters:
        if isinstance(f, _OwnerFilter):
            if owner is None:
                f.everyone = True
            else:
                f.owners.add(owner)


def release_logging(owner: str) -> None:
    """``owner`` is done: its files close once no other owner uses them."""
    with _owners_lock:
        _owners.discard(owner)
    for h in list(log.handlers):
        for f in h.filters:
            if isinstance(f, _OwnerFilter) and owner in f.owners:
                f.owners.discard(owner)
                if not f.owners and not f.everyone:
                    log.removeHandler(h)
                    h.close()


def log_body(direction: str, url: str, headers: Any, body: bytes | str | None) -> None:
    """Log a request or response with secrets redacted (only called when log_bodies is on)."""
    body_log.info("%s %s headers=%s body=%s", direction, redact_url(url), redact_headers(dict(headers)),
                  redact(body or b""))
