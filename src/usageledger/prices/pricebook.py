"""Prices a collector keeps in its storage: effective-dated entries and aliases, over
genai-prices' offline table.

A record without a cost is priced, at its event time, from the first of:

1. an **override**: the entry for its ``(provider, model)`` whose ``effective_from`` is the
   latest on or before the record's UTC date (each entry applies from its date until the
   next one; an entry without a date applies from the beginning);
2. an **alias**: ``(provider, name) -> model``, then the override of that model, else the
   table's price of that model;
3. **the table** shipped inside the genai-prices package (:mod:`usageledger.pricing`).

A record that carries its own cost (e.g. the provider-reported cost from a gateway) keeps it.

Every replica of a collector reads the same storage; a :class:`PriceBook` re-reads the
entries at most once per ``cache_s`` (1 s by default), so a change made through one replica
applies on every other within that delay.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import msgspec

from ..errors import UsageLedgerError
from ..schema.records import UsageRecord
from .pricing import Rates, _lookup, _price_value, _Variants, _warn_unknown, table_rates

__all__ = ["PriceBook", "PriceEntry", "PriceInputError", "parse_price", "table_version", "PRICE_FIELDS"]

_MILLION = Decimal(1_000_000)

#: the fields of an entry; the first two are required
PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok",
                "reasoning_per_mtok", "per_request", "cache_write_1h_per_mtok", "input_audio_per_mtok",
                "output_audio_per_mtok", "input_image_per_mtok", "output_image_per_mtok")
#: optional entry fields priced as a part of another kind (None: the price of that kind)
_PART_FIELDS = {"cache_write_1h_per_mtok": "cache_write_1h", "input_audio_per_mtok": "input_audio",
                "output_audio_per_mtok": "output_audio", "input_image_per_mtok": "input_image",
                "output_image_per_mtok": "output_image"}


class PriceInputError(UsageLedgerError, ValueError):
    """A price entry or alias that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """Per-1M-token prices of one entry. ``cache_read``/``cache_write`` default to the input
    price; ``reasoning`` (None: the output price) prices the reasoning tokens, which are
    counted within the output tokens; ``per_request`` is added once per record. The part
    prices (None: the price of their whole) price the finer counts of a record:
    ``cache_write_1h`` its 1-hour cache writes (``cache_write`` is then the 5-minute
    price), ``input_audio``/``input_image`` parts of its input, ``output_audio``/
    ``output_image`` parts of its output."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    reasoning: Decimal | None = None
    per_request: Decimal = Decimal(0)
    currency: str = "USD"
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    input_image: Decimal | None = None
    output_image: Decimal | None = None

    def rates(self) -> Rates:
        """These prices as the table's Rates (one pricing rule for both)."""
        return Rates(self.input, self.output, self.cache_read, self.cache_write,
                     cache_write_1h=self.cache_write_1h, input_audio=self.input_audio,
                     output_audio=self.output_audio, input_image=self.input_image,
                     output_image=self.output_image, reasoning=self.reasoning,
                     per_request=self.per_request)

    def cost(self, r: UsageRecord) -> Decimal:
        return self.rates().record_cost(r)


def _day(value: Any, where: str) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise PriceInputError(f"{where}: effective_from must be a date 'YYYY-MM-DD' (UTC), got {value!r}")


def parse_price(body: Any, where: str = "the price") -> tuple[str, PriceEntry]:
    """``(effective_from, entry)`` from a JSON body; :class:`PriceInputError` naming the
    field, its value and ``where`` for anything else."""
    if not isinstance(body, Mapping):
        raise PriceInputError(f"{where} must be a JSON object with {PRICE_FIELDS[:2]}, got {body!r}")
    unknown = set(body) - {*PRICE_FIELDS, "currency", "effective_from"}
    if unknown:
        raise PriceInputError(f"{where} has unknown field(s) {sorted(unknown)}; use "
                              f"{[*PRICE_FIELDS, 'currency', 'effective_from']}")
    values: dict[str, Decimal] = {}
    for k in PRICE_FIELDS:
        v = body.get(k)
        if v is None:
            if k in PRICE_FIELDS[:2]:
                raise PriceInputError(f"{where}: {k} is required (a decimal string per 1M tokens)")
            continue
        if isinstance(v, float):
            raise PriceInputError(f"{where}: {k} must be a decimal string such as \"2.50\", got {v!r}")
        try:
            values[k] = _price_value(f"{where}: {k}", v)
        except (TypeError, ValueError) as exc:
            raise PriceInputError(str(exc)) from None
    currency = body.get("currency", "USD")
    if not isinstance(currency, str) or not currency.strip() or currency != currency.strip():
        raise PriceInputError(f"{where}: currency must be a non-empty code such as \"USD\", got {currency!r}")
    entry = PriceEntry(
        values["input_per_mtok"], values["output_per_mtok"],
        values.get("cache_read_per_mtok", values["input_per_mtok"]),
        values.get("cache_write_per_mtok", values["input_per_mtok"]),
        values.get("reasoning_per_mtok"), values.get("per_request", Decimal(0)), currency,
        **{attr: values.get(field) for field, attr in _PART_FIELDS.items()},
    )
    return _day(body.get("effective_from"), where), entry


def entry_json(entry: PriceEntry) -> dict[str, Any]:
    """The stored (and answered) form of an entry: decimal strings."""
    out: dict[str, Any] = {"input_per_mtok": entry.input, "output_per_mtok": entry.output,
                           "cache_read_per_mtok": entry.cache_read, "cache_write_per_mtok": entry.cache_write}
    if entry.reasoning is not None:
        out["reasoning_per_mtok"] = entry.reasoning
    if entry.per_request:
        out["per_request"] = entry.per_request
    for field, attr in _PART_FIELDS.items():
        if getattr(entry, attr) is not None:
            out[field] = getattr(entry, attr)
    out["currency"] = entry.currency
    return {k: str(v) for k, v in out.items()}


@functools.cache
def table_version() -> str:
    """The installed genai-prices version (the table's version)."""
    from importlib.metadata import version

    return version("genai-prices")


def _utc_day(at: datetime) -> str:
    return (at.astimezone(UTC) if at.tzinfo else at).date().isoformat()


class PriceBook:
    """Overrides and aliases of ``store`` (re-read at most every ``cache_s`` seconds) over
    the genai-prices table. A store without ``supports_prices`` gives the table only."""

    def __init__(self, store: Any, *, cache_s: float = 1.0):
        self.store = store
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._entries: dict[tuple[str, str], list[tuple[str, PriceEntry]]] = {}
        self._aliases: dict[tuple[str, str], str] = {}

    def refresh(self) -> None:
        """Read the entries and aliases now."""
        entries: dict[tuple[str, str], list[tuple[str, PriceEntry]]] = {}
        aliases: dict[tuple[str, str], str] = {}
        if getattr(self.store, "supports_prices", False):
            for e in self.store.list_prices():
                day, entry = parse_price({k: e[k] for k in e if k not in ("provider", "model")},
                                         f"the stored price of {e['provider']}/{e['model']}")
                entries.setdefault((e["provider"], e["model"]), []).append((day, entry))
            for a in self.store.list_aliases():
                aliases[(a["provider"], a["name"])] = a["model"]
        for history in entries.values():
            history.sort(key=lambda de: de[0])
        with self._lock:
            self._entries, self._aliases = entries, aliases
            self._loaded_at = time.monotonic()

    def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at >= self.cache_s:
            self.refresh()

    def _override(self, provider: str, model: str, day: str) -> tuple[str, PriceEntry] | None:
        found = None
        for start, entry in self._entries.get((provider, model), ()):
            if start <= day:
                found = (start, entry)
        return found

    def quote(self, provider: str, model: str, at: datetime | None = None,
              service_tier: str | None = None) -> tuple[Any, dict[str, Any]] | None:
        """``(prices, source)`` in force for a call at ``at`` (default now) served at
        ``service_tier`` (the table's batch/flex/priority prices; an override applies to
        every tier), or None when unknown. ``prices`` is a :class:`PriceEntry` or the table's ``Rates``; ``source``
        says where they came from: ``{"source": "override", "effective_from": ...}``,
        ``{"source": "table", "genai_prices": version}``, with ``"alias": name`` when an
        alias led to the model."""
        self._fresh()
        at = at or datetime.now(UTC)
        provider, model = provider.lower(), model.lower()
        day = _utc_day(at)
        source: dict[str, Any] = {"provider": provider, "model": model}
        target = model
        found = self._override(provider, model, day)
        if found is None and (provider, model) in self._aliases:
            target = self._aliases[(provider, model)]
            source = {**source, "alias": model, "model": target}
            found = self._override(provider, target, day)
        if found is not None:
            return found[1], {**source, "source": "override", "effective_from": found[0] or None}
        table = _lookup(provider or None, target)
        if table is None:
            return None
        rates = table_rates(table, at, service_tier)
        if service_tier is not None:
            source["service_tier"] = service_tier
        return rates, {**source, "source": "table", "genai_prices": table_version()}

    def cost(self, record: UsageRecord) -> tuple[Decimal, str] | None:
        """``(cost, currency)`` of ``record`` from the prices in force at its time, or None."""
        q = self.quote(record.provider, record.model, record.timestamp, record.service_tier)
        if q is None:
            _warn_unknown(record.provider.lower(), record.model)
            return None
        return _cost_of(q[0], record)

    def price(self, record: UsageRecord) -> UsageRecord:
        """``record`` with its cost filled in, or unchanged when it has one already (a
        provider-reported cost is kept) or its price is unknown."""
        if record.cost is not None:
            return record
        got = self.cost(record)
        if got is None:
            return record
        return msgspec.structs.replace(record, cost=got[0], currency=got[1])

    def price_many(self, records: Iterable[UsageRecord]) -> list[UsageRecord]:
        """:meth:`price` of each record, the prices looked up once per provider, model,
        service tier and UTC day wherever they cannot change within a day (overrides,
        aliases to them, the table's fixed prices); other table prices are looked up per
        record. The costs are the very ones :meth:`price` gives. (A batch of 1,000 records
        of three models, in-process, CPU over alternating rounds on the loaded box: 0.64x
        of :meth:`price` per record, docs/benchmarks.md.)"""
        memo: dict[tuple[str, str, str, str | None], Any] = {}
        out: list[UsageRecord] = []
        replace = msgspec.structs.replace
        for r in records:
            if r.cost is not None:
                out.append(r)
                continue
            key = (r.provider, r.model, _utc_day(r.timestamp), r.service_tier)
            prices = memo.get(key, _UNSEEN)
            if prices is _UNSEEN:
                q = self.quote(r.provider, r.model, r.timestamp, r.service_tier)
                if q is None:
                    _warn_unknown(r.provider.lower(), r.model)
                    prices = None
                elif isinstance(q[0], PriceEntry) or _fixed(
                        _lookup(q[1]["provider"] or None, q[1]["model"]), r.service_tier):
                    prices = q[0]
                else:
                    prices = _PER_RECORD
                memo[key] = prices
            if prices is None:
                out.append(r)
            elif prices is _PER_RECORD:
                out.append(self.price(r))
            else:
                cost, currency = _cost_of(prices, r)
                out.append(replace(r, cost=cost, currency=currency))
        return out


def _fixed(found: Any, service_tier: str | None) -> bool:
    """Whether the table's prices of a lookup are the same at every time: fixed prices, or
    the standard prices of fixed ones with tier variants (a tier is resolved per record)."""
    return isinstance(found, Rates) or (service_tier is None and isinstance(found, _Variants))


def _cost_of(prices: Any, record: UsageRecord) -> tuple[Decimal, str]:
    """``(cost, currency)`` of ``record`` at ``prices`` (an entry or the table's Rates)."""
    if isinstance(prices, PriceEntry):
        return prices.cost(record), prices.currency
    return prices.record_cost(record), "USD"


_UNSEEN = object()
_PER_RECORD = object()
