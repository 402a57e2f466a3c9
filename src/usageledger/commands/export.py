"""Streamed export of usage records to CSV or JSON Lines (`usageledger export`), and the
reader that turns such a file back into records (`usageledger import`).

Records are pulled page by page through ``StorageBackend.iter_records`` and written as
they come, so memory stays flat whatever the size of the store. A file is written under
a temporary name and renamed when complete: an interrupted export leaves no half file.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import msgspec

from ..schema.records import UsageRecord, decode_usage, encode
from ..storage.base import StorageBackend

__all__ = ["EXPORT_FORMATS", "CSV_FIELDS", "export_records", "read_export", "count_matching"]

EXPORT_FORMATS = ("csv", "jsonl")
#: CSV columns: every UsageRecord field, in declaration order
CSV_FIELDS: tuple[str, ...] = UsageRecord.__struct_fields__
_JSON_FIELDS = ("tags", "payload")
_INT_FIELDS = frozenset(f for f in CSV_FIELDS if f.endswith("_tokens"))
_OPTIONAL_STR = frozenset(("user_id", "session_id", "customer_key", "run_id", "response_id", "service_tier"))

#: records between progress callbacks (a callback per record would cost more than a row)
PROGRESS_EVERY = 5000


def count_matching(storage: StorageBackend, since: datetime | None, until: datetime | None) -> int:
    """How many records an export of this range will write (for the progress bar)."""
    rows = storage.aggregate((), since=since, until=until)
    return sum(r["count"] for r in rows)


def _csv_row(rec: UsageRecord) -> list[Any]:
    return [
        rec.id, rec.timestamp.isoformat(), rec.provider, rec.model, rec.input_tokens,
        rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens, rec.reasoning_tokens,
        "" if rec.cost is None else format(rec.cost, "f"), rec.currency, rec.user_id, rec.session_id,
        rec.customer_key, rec.run_id, rec.response_id,
        encode(rec.tags).decode() if rec.tags else "", "" if rec.payload is None else encode(rec.payload).decode(),
        rec.cache_write_1h_tokens, rec.input_audio_tokens, rec.output_audio_tokens, rec.input_image_tokens,
        rec.output_image_tokens, rec.service_tier,
    ]


def write_records(records: Iterable[UsageRecord], out: IO[str], fmt: str,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write ``records`` to the text stream ``out``; returns how many."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    n = 0
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for rec in records:
            w.writerow(_csv_row(rec))
            n += 1
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
    else:
        for rec in records:
            out.write(encode(rec).decode())
            out.write("\n")
            n += 1
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
    if progress is not None:
        progress(n % PROGRESS_EVERY)
    return n


def export_records(
    storage: StorageBackend,
    out: str | os.PathLike[str],
    fmt: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 5000,
) -> int:
    """Export the records in ``[since, until)`` to the file ``out`` (``-``: stdout), newest
    first; returns how many were written."""
    records = storage.iter_records(batch_size=batch_size, since=since, until=until)
    if str(out) == "-":
        import sys

        return write_records(records, sys.stdout, fmt, progress)
    path = Path(out)
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        with open(part, "w", encoding="utf-8", newline="") as f:
            n = write_records(records, f, fmt, progress)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return n


def _from_csv(row: dict[str, str], line: int) -> UsageRecord:
    fields: dict[str, Any] = {}
    try:
        for k, v in row.items():
            if k in _INT_FIELDS:
                fields[k] = int(v)
            elif k == "timestamp":
                fields[k] = datetime.fromisoformat(v)
            elif k == "cost":
                fields[k] = Decimal(v) if v else None
            elif k in _JSON_FIELDS:
                if v:
                    fields[k] = msgspec.json.decode(v)
            elif k in _OPTIONAL_STR:
                fields[k] = v or None
            elif k is not None:
                fields[k] = v
        return msgspec.convert(fields, UsageRecord)
    except (ValueError, ArithmeticError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"line {line}: not a usage record: {exc}") from None


def read_export(path: str | os.PathLike[str], fmt: str | None = None) -> Iterator[UsageRecord]:
    """Stream the records of a file written by :func:`export_records` (format from the
    extension unless given: ``.csv`` is CSV, anything else JSON Lines)."""
    p = Path(path)
    fmt = fmt or ("csv" if p.suffix.lower() == ".csv" else "jsonl")
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    with open(p, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            reader = csv.DictReader(f)
            missing = set(CSV_FIELDS[:4]) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{p}: not a usage CSV export (no column {', '.join(sorted(missing))})")
            for i, row in enumerate(reader, start=2):
                yield _from_csv(row, i)
        else:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield decode_usage(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise ValueError(f"{p} line {i}: not a usage record: {exc}") from None
