"""Daily NDJSON files ``events_YYYYMMDD.ndjson``: run writes and events, one JSON object
per line, dated by each line's own timestamp (UTC).

Appends are safe across processes: each batch is written under an exclusive ``flock`` of
the file, as whole lines, then fsynced, so two writers never interleave or tear lines.
A line torn by a crash (no trailing newline) is closed with a newline before the next
append, and readers skip lines that do not parse, so one bad line never hides the rest.

Delivery to the files is at least once (a crash between the write and the journal's ack
writes a batch again): every line carries its write ``id``; a run's latest state is its
line with the highest ``seq``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..core._files import write_all
from ..core.sink import OK, Reject, Result, Retry, Sink
from ..schema.records import KIND_RUN, encode
from ..schema.runs import RunEvent, RunRecord

if TYPE_CHECKING:
    from ..core.journal.base import JournalItem

log = logging.getLogger("usageledger.telemetry.ndjson")

__all__ = ["NDJSONWriter", "NdjsonSink", "KIND_EVENT"]

#: journal item kind of a RunEvent (NDJSON only; the collector takes runs)
KIND_EVENT = "run_event"

_NAME = re.compile(r"^events_(\d{8})\.ndjson$")
_PREFIX = {KIND_RUN: b'{"record_type":"run",', KIND_EVENT: b'{"record_type":"event",'}


class _Dated(msgspec.Struct):
    updated_at: str | None = None
    timestamp: str | None = None


_decode_dated = msgspec.json.Decoder(_Dated).decode


def _day(value: str | date | datetime | None) -> str:
    """``YYYYMMDD`` from a date, datetime, ``YYYYMMDD`` or ISO string; None is today (UTC)."""
    if value is None:
        return datetime.now(UTC).strftime("%Y%m%d")
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y%m%d") if value.tzinfo else value.strftime("%Y%m%d")
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    if isinstance(value, str):
        digits = value[:10].replace("-", "")
        if len(digits) >= 8 and digits[:8].isdigit():
            return digits[:8]
    raise ValueError(f"date must be YYYYMMDD, YYYY-MM-DD, an ISO timestamp or a date, got {value!r}")


class NDJSONWriter:
    """Append-only daily NDJSON files in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, day: str | date | datetime | None = None) -> Path:
        return self.directory / f"events_{_day(day)}.ndjson"

    # -- writing ----------------------------------------------------------------------------
    def append(self, record: RunRecord | RunEvent | dict[str, Any]) -> Path:
        """Append one record (a RunRecord, RunEvent or dict) to the file of its own date."""
        if isinstance(record, RunRecord | RunEvent):
            data = record.to_dict()
        elif isinstance(record, dict):
            data = record
        else:
            raise TypeError(f"record must be a RunRecord, RunEvent or dict, got {record!r}")
        stamp = data.get("updated_at") or data.get("timestamp") or data.get("start_time")
        path = self.path_for(stamp)
        self.append_lines(path, [encode(data)])
        return path

    def append_lines(self, path: Path, lines: Iterable[bytes]) -> None:
        """Append encoded JSON objects (without newlines) to ``path`` as one locked,
        fsynced write: whole lines, never interleaved with another process's."""
        body = b"\n".join(lines) + b"\n"
        # 0600: run summaries and errors can name customers (like every file we create)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)  # read: the torn-line check
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # a writer died mid-line: end that line so ours stays whole
                body = b"\n" + body
            write_all(fd, body)
        finally:
            os.close(fd)  # closing releases the lock

    # -- reading ----------------------------------------------------------------------------
    def read_file(self, day: str | date | datetime | None = None) -> list[dict[str, Any]]:
        """Every parseable line of that day's file, in file order; lines that do not parse
        (torn by a crash) are skipped and logged. A missing file reads as empty."""
        path = self.path_for(day)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        bad = 0
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                out.append(obj)
            else:
                bad += 1
        if bad:
            log.warning("%s: skipped %d lines that are not JSON objects", path, bad)
        return out

    def list_files(self) -> list[Path]:
        """The daily files, oldest first."""
        return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))

    def get_file_info(self) -> list[dict[str, Any]]:
        """Per file: ``path``, ``date`` (YYYY-MM-DD), ``size_bytes``, ``lines``, ``modified``
        (ISO UTC)."""
        info = []
        for path in self.list_files():
            try:
                st = path.stat()
                with path.open("rb") as f:
                    lines = sum(chunk.count(b"\n") for chunk in iter(lambda f=f: f.read(1 << 20), b""))
            except FileNotFoundError:
                continue
            d = _NAME.match(path.name).group(1)  # type: ignore[union-attr]
            info.append({
                "path": str(path),
                "date": f"{d[:4]}-{d[4:6]}-{d[6:]}",
                "size_bytes": st.st_size,
                "lines": lines,
                "modified": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(),
            })
        return info


class NdjsonSink(Sink):
    """Journal items (run writes and events) -> daily NDJSON files, one locked fsynced
    append per file per batch."""

    name = "ndjson"

    def __init__(self, writer: NDJSONWriter):
        self.writer = writer

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        results: dict[str, Result] = {}
        by_day: dict[str, list[bytes]] = {}
        ids_by_day: dict[str, list[str]] = {}
        for item in batch:
            prefix = _PREFIX.get(item.kind)
            data = item.data
            if prefix is None or not data.startswith(b"{") or len(data) < 3:
                results[item.id] = Reject(f"not a run write or event: kind {item.kind!r}")
                continue
            try:
                dated = _decode_dated(data)
            except msgspec.DecodeError as exc:
                results[item.id] = Reject(f"not a JSON object: {exc}")
                continue
            day = _day(dated.updated_at or dated.timestamp)
            by_day.setdefault(day, []).append(prefix + data[1:])
            ids_by_day.setdefault(day, []).append(item.id)
        for day, lines in by_day.items():
            try:
                self.writer.append_lines(self.writer.path_for(day), lines)
            except OSError as exc:  # disk full, permissions: the journal keeps them
                log.warning("NDJSON append to %s failed: %r", self.writer.path_for(day), exc)
                retry = Retry(None, f"{type(exc).__name__}: {exc}")
                results.update({i: retry for i in ids_by_day[day]})
                continue
            results.update({i: OK for i in ids_by_day[day]})
        return results
