"""Logging set-up for the ``usageledger`` logger (never the root logger) and body logging
with redaction."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

from .redact import redact, redact_headers

__all__ = ["configure_logging", "log_body"]

log = logging.getLogger("usageledger")
body_log = logging.getLogger("usageledger.bodies")


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Log files can name customers: created 0600."""

    def _open(self):  # type: ignore[override]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, self.mode, encoding=self.encoding)


def configure_logging(log_file: str | os.PathLike[str] | None, log_level: str | int = "INFO") -> None:
    """Set the level of the ``usageledger`` logger and add a file handler for ``log_file``
    once (calling again with the same file adds nothing)."""
    log.setLevel(log_level)
    if log_file is None:
        return
    path = str(Path(log_file).expanduser().resolve())
    for h in log.handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == path:
            return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = _PrivateRotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)


def log_body(direction: str, url: str, headers: Any, body: bytes | str | None) -> None:
    """Log a request or response with secrets redacted (only called when log_bodies is on)."""
    body_log.info("%s %s headers=%s body=%s", direction, url, redact_headers(dict(headers)), redact(body or b""))
