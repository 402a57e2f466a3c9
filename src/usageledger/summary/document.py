"""The daily-summary file as a document: its structure, validation, the merge of a batch
of records into it, and its totals. Pure values and functions: no I/O, no locks (the
snapshot store, :mod:`usageledger.summary_store`, reads and writes these documents).

A document is one *snapshot*: totals per UTC day of each record's own timestamp, then per
provider, then per model (calls, token sums, exact decimal cost strings). It belongs to a
*lineage* (a random id) and carries a *generation* that grows by one per write; a write
never edits a document, it makes the next one (:func:`with_records`). ``absorbed`` says
which other lineages, up to which generation, a document contains (:func:`absorb`);
``recent_ids`` are the ids of the last records it counted, so a redelivered record is
recognised. docs/tracker.md, "The file", shows the JSON.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, TypeVar

import msgspec

from ..errors import UsageLedgerError
from ..schema.records import UsageRecord, encode
from ..schema.totals import PART_SUMS, Totals

__all__ = [
    "FORMAT", "VERSION", "Entry", "Days", "SummaryDoc", "CorruptSummary", "NewerSummary",
    "decode_doc", "encode_doc", "new_doc", "with_records", "absorb", "live_copies", "merge_days",
    "add_entries", "entry_of", "day_of", "apply_records", "entries", "totals",
]

log = logging.getLogger("usageledger.summary")

FORMAT = "usageledger-summary"
VERSION = 1

NonNeg = Annotated[int, msgspec.Meta(ge=0)]


class Entry(msgspec.Struct, omit_defaults=True):
    """Totals of one (day, provider, model). Never mutated once built: snapshots share
    entries, so applying a batch copies only what it touches."""

    calls: NonNeg
    input_tokens: NonNeg
    output_tokens: NonNeg
    #: USD, exact, of the priced calls
    cost: Decimal
    cache_read_tokens: NonNeg = 0
    cache_write_tokens: NonNeg = 0
    reasoning_tokens: NonNeg = 0
    #: calls whose cost is unknown (model without a price): not in ``cost``
    unpriced_calls: NonNeg = 0
    #: costs recorded in other currencies than USD, per currency
    cost_other: dict[str, Decimal] = {}
    #: the finer counts (parts of the sums above; absent in files written before them)
    cache_write_1h_tokens: NonNeg = 0
    input_audio_tokens: NonNeg = 0
    output_audio_tokens: NonNeg = 0
    input_image_tokens: NonNeg = 0
    output_image_tokens: NonNeg = 0

    def totals(self) -> Totals:
        """These totals as the package's one totals type (cost per currency)."""
        costs = dict(self.cost_other)
        if self.cost or not costs:
            costs["USD"] = costs.get("USD", Decimal(0)) + self.cost
        return Totals(self.calls, self.input_tokens, self.output_tokens, self.cache_read_tokens,
                      self.cache_write_tokens, self.reasoning_tokens, self.unpriced_calls, costs,
                      *(getattr(self, k) for k in PART_SUMS))


#: day (``YYYY-MM-DD``) -> provider -> model -> totals
Days = dict[str, dict[str, dict[str, Entry]]]


class SummaryDoc(msgspec.Struct):
    format: str
    version: int
    lineage: str
    generation: NonNeg
    updated_at: str
    writer: str
    days: Days
    absorbed: dict[str, int] = {}
    recent_ids: list[str] = []


_decoder = msgspec.json.Decoder(SummaryDoc)


class CorruptSummary(UsageLedgerError, ValueError):
    """Bytes that are not a valid summary document (the message says what is wrong)."""


class NewerSummary(UsageLedgerError, ValueError):
    """Written by a newer usageledger: valid for it, so never archived nor overwritten."""


def decode_doc(data: bytes) -> SummaryDoc:
    """Parse and validate a snapshot; CorruptSummary says what is wrong."""
    try:
        doc = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        version = _version_of(data)
        if version is not None and version > VERSION:
            raise NewerSummary(f"format version {version}, this code reads {VERSION}") from None
        raise CorruptSummary(str(exc)) from None
    if doc.format != FORMAT:
        raise CorruptSummary(f"format is {doc.format!r}, expected {FORMAT!r}")
    if doc.version > VERSION:
        raise NewerSummary(f"format version {doc.version}, this code reads {VERSION}")
    if doc.version != VERSION:
        raise CorruptSummary(f"version is {doc.version!r}, this code reads {VERSION}")
    for day, providers in doc.days.items():
        if len(day) != 10 or day[4] != "-" or day[7] != "-":
            raise CorruptSummary(f"day key {day!r} is not YYYY-MM-DD")
        for models in providers.values():
            for entry in models.values():
                for d in (entry.cost, *entry.cost_other.values()):
                    if not d.is_finite() or d < 0:
                        raise CorruptSummary(f"cost {d!r} on {day} is not a finite non-negative number")
    return doc


class _Versioned(msgspec.Struct):
    format: str
    version: int


def _version_of(data: bytes) -> int | None:
    try:
        head = msgspec.json.decode(data, type=_Versioned)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return head.version if head.format == FORMAT else None


def encode_doc(doc: SummaryDoc) -> bytes:
    return encode(doc)


def new_doc(writer: str) -> SummaryDoc:
    """An empty snapshot of a new lineage, generation 0 (never written yet)."""
    return SummaryDoc(FORMAT, VERSION, uuid.uuid4().hex, 0, _now_iso(), writer, {})


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def with_records(doc: SummaryDoc, records: list[UsageRecord], writer: str,
                 dedup_window: int) -> SummaryDoc:
    """The next snapshot of ``doc``'s lineage: ``records`` added (their ids appended to
    the last ``dedup_window`` recent ids), generation + 1, stamped by ``writer``."""
    ids = doc.recent_ids
    if records and dedup_window:
        ids = [*ids, *(r.id for r in records)][-dedup_window:]
    return SummaryDoc(
        FORMAT, VERSION, doc.lineage, doc.generation + 1, _now_iso(), writer,
        apply_records(doc.days, records) if records else doc.days, doc.absorbed, ids,
    )


def absorb(doc: SummaryDoc, others: list[SummaryDoc], writer: str, dedup_window: int) -> SummaryDoc:
    """``doc`` with the totals of ``others`` (snapshots of other lineages, which hold
    other records) added, and ``absorbed`` saying up to which generation it holds them,
    so that those copies are never counted again. The generation is unchanged: the write
    that records the absorption makes the next one."""
    absorbed = dict(doc.absorbed)
    ids = list(doc.recent_ids)
    for o in others:
        for lineage, gen in (*o.absorbed.items(), (o.lineage, o.generation)):
            absorbed[lineage] = max(absorbed.get(lineage, -1), gen)
        ids.extend(o.recent_ids)
    return SummaryDoc(
        FORMAT, VERSION, doc.lineage, doc.generation, doc.updated_at, writer,
        merge_days([doc.days, *(o.days for o in others)]), absorbed,
        list(dict.fromkeys(ids))[-dedup_window:] if dedup_window else [],
    )


W = TypeVar("W")


def live_copies(found: Iterable[tuple[SummaryDoc, W]]) -> list[tuple[SummaryDoc, W]]:
    """Of several copies (each with where it was found), the ones whose totals count: per
    lineage the highest generation (a snapshot contains its predecessors, so copies of one
    lineage are never added up), minus the lineages another copy has absorbed up to that
    generation. What is left holds disjoint records: their totals add up."""
    newest: dict[str, tuple[SummaryDoc, W]] = {}
    for doc, where in found:
        cur = newest.get(doc.lineage)
        if cur is None or doc.generation > cur[0].generation:
            newest[doc.lineage] = (doc, where)
        elif doc.generation == cur[0].generation and doc.writer != cur[0].writer:
            log.error("two copies of summary lineage %s generation %d by different writers "
                      "(%s, %s); using the first", doc.lineage, doc.generation, cur[0].writer, doc.writer)
    return [
        (d, w) for d, w in newest.values()
        if not any(o.absorbed.get(d.lineage, -1) >= d.generation for o, _ in newest.values() if o is not d)
    ]


def merge_days(parts: Iterable[Days]) -> Days:
    """Sum several snapshots' days into new ones (inputs untouched)."""
    out: Days = {}
    for days in parts:
        for day, providers in days.items():
            od = out.setdefault(day, {})
            for provider, models in providers.items():
                op = od.setdefault(provider, {})
                for model, e in models.items():
                    prev = op.get(model)
                    op[model] = e if prev is None else add_entries(prev, e)
    return out


def add_entries(a: Entry, b: Entry) -> Entry:
    other = dict(a.cost_other)
    for cur, v in b.cost_other.items():
        other[cur] = other.get(cur, Decimal(0)) + v
    return Entry(
        a.calls + b.calls, a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens,
        a.cost + b.cost, a.cache_read_tokens + b.cache_read_tokens,
        a.cache_write_tokens + b.cache_write_tokens, a.reasoning_tokens + b.reasoning_tokens,
        a.unpriced_calls + b.unpriced_calls, other, *(getattr(a, k) + getattr(b, k) for k in PART_SUMS),
    )


def entry_of(record: UsageRecord) -> Entry:
    cost, other, unpriced = Decimal(0), {}, 0
    if record.cost is None:
        unpriced = 1
    elif record.currency == "USD":
        cost = record.cost
    else:
        other = {record.currency: record.cost}
    return Entry(
        1, record.input_tokens, record.output_tokens, cost, record.cache_read_tokens,
        record.cache_write_tokens, record.reasoning_tokens, unpriced, other,
        *(getattr(record, k) for k in PART_SUMS),
    )


def day_of(record: UsageRecord) -> str:
    """The UTC day of the record's own timestamp (records keep timestamps in UTC)."""
    return record.timestamp.date().isoformat()


def apply_records(days: Days, records: Iterable[UsageRecord]) -> Days:
    """New days with ``records`` added, copying only the day/provider dicts touched."""
    out = dict(days)
    copied: set[tuple[str, str | None]] = set()
    for r in records:
        day = day_of(r)
        if (day, None) not in copied:
            out[day] = dict(out.get(day, {}))
            copied.add((day, None))
        providers = out[day]
        if (day, r.provider) not in copied:
            providers[r.provider] = dict(providers.get(r.provider, {}))
            copied.add((day, r.provider))
        models = providers[r.provider]
        e = entry_of(r)
        prev = models.get(r.model)
        models[r.model] = e if prev is None else add_entries(prev, e)
    return out


def in_range(day: str, first: str | None, last: str | None) -> bool:
    """Whether ``day`` (``YYYY-MM-DD``) is within ``first``..``last`` (inclusive, None: open)."""
    return (first is None or day >= first) and (last is None or day <= last)


def entries(parts: Iterable[Days], first: str | None = None,
            last: str | None = None) -> Iterator[tuple[str, str, str, Totals]]:
    """``(day, provider, model, totals)`` of every entry of ``parts`` whose day is within
    ``first``..``last``. Entries of several parts with one key come once per part: sum
    them (the parts are disjoint lineages, see :func:`absorb`)."""
    for days in parts:
        for day, providers in days.items():
            if not in_range(day, first, last):
                continue
            for provider, models in providers.items():
                for model, e in models.items():
                    yield day, provider, model, e.totals()


def totals(parts: Iterable[Days], first: str | None = None, last: str | None = None) -> Totals:
    """The sum of every entry of ``parts`` within ``first``..``last`` (inclusive)."""
    out = Totals()
    for *_, t in entries(parts, first, last):
        out += t
    return out
