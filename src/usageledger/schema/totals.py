"""Totals: the one type for "how much was used" — record count, token sums, one
``total_tokens``, and cost **per currency** (money is never added across currencies).

Storage aggregates (one row per group and currency), ``Meter.cost()``/``Meter.totals()``,
the summary file read by ``UsageTracker``, ``usageledger report`` and the collector's
``/api/v1/summary`` all build their totals with this type.

``total_tokens`` is defined here once: ``input_tokens + cache_read_tokens +
cache_write_tokens + output_tokens``. ``input_tokens`` counts only uncached input (the
integrations subtract cached tokens from a provider's prompt count), so every input token
is counted exactly once; ``reasoning_tokens`` are part of ``output_tokens`` and are not
added again. It equals a provider's own "total tokens" (prompt incl. cache + completion).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import MixedCurrencyError

__all__ = ["Totals", "TOKEN_SUMS", "PART_SUMS", "total_tokens", "MixedCurrencyError"]

#: the token counts every totals carries, in display order
TOKEN_SUMS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "reasoning_tokens")
#: sums of the finer counts, each a part of one of the above (never added to total_tokens):
#: the 1-hour cache writes, the audio and image input and output tokens
PART_SUMS = ("cache_write_1h_tokens", "input_audio_tokens", "output_audio_tokens",
             "input_image_tokens", "output_image_tokens")


def total_tokens(input_tokens: int, output_tokens: int, cache_read_tokens: int,
                 cache_write_tokens: int) -> int:
    """The one definition of ``total_tokens``: uncached input + cache reads + cache
    writes + output (reasoning is inside output)."""
    return input_tokens + cache_read_tokens + cache_write_tokens + output_tokens


def _plain(d: Decimal) -> str:
    return format(d, "f")  # every digit, never an exponent


@dataclass(slots=True)
class Totals:
    """Sums over some records. ``costs``: ``{currency: Decimal}`` of the records with a
    known cost; ``unknown_cost``: how many had none (they add to the counts only)."""

    count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    unknown_cost: int = 0
    costs: dict[str, Decimal] = field(default_factory=dict)
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return total_tokens(self.input_tokens, self.output_tokens, self.cache_read_tokens,
                            self.cache_write_tokens)

    @property
    def currencies(self) -> tuple[str, ...]:
        """The currencies with a non-zero cost, sorted (zero in any currency is zero)."""
        return tuple(sorted(c for c, v in self.costs.items() if v))

    def cost(self, currency: str | None = None) -> Decimal:
        """The cost as one number: in ``currency`` when given (0 when there is none in it),
        else in the one currency the totals hold. Raises :class:`MixedCurrencyError`
        naming the currencies when there are several and none was chosen."""
        if currency is not None:
            return self.costs.get(currency, Decimal(0))
        spent = self.currencies
        if len(spent) > 1:
            raise MixedCurrencyError(spent)
        return self.costs[spent[0]] if spent else Decimal(0)

    @property
    def currency(self) -> str | None:
        """The one currency of the totals; None when there are none or several."""
        spent = self.currencies or tuple(self.costs)
        return spent[0] if len(spent) == 1 else None

    # -- building ------------------------------------------------------------------------
    def add_cost(self, currency: str, cost: Decimal | None) -> None:
        self.costs[currency] = self.costs.get(currency, Decimal(0)) + (cost or 0)

    def add_record(self, rec: Any) -> Totals:
        """Add one :class:`~usageledger.records.UsageRecord`."""
        self.count += 1
        self.input_tokens += rec.input_tokens
        self.output_tokens += rec.output_tokens
        self.cache_read_tokens += rec.cache_read_tokens
        self.cache_write_tokens += rec.cache_write_tokens
        self.reasoning_tokens += rec.reasoning_tokens
        for k in PART_SUMS:
            setattr(self, k, getattr(self, k) + getattr(rec, k, 0))
        if rec.cost is None:
            self.unknown_cost += 1
        self.add_cost(rec.currency, rec.cost)
        return self

    def add_row(self, row: Mapping[str, Any]) -> Totals:
        """Add one storage aggregate row (its ``currency`` and ``cost``). A row without a
        currency is the zero row of an empty aggregate."""
        self.count += row["count"]
        for k in TOKEN_SUMS:
            setattr(self, k, getattr(self, k) + row[k])
        for k in PART_SUMS:  # rows of a summary written before these existed lack them
            setattr(self, k, getattr(self, k) + row.get(k, 0))
        self.unknown_cost += row["unknown_cost"]
        if row.get("currency") is not None:
            self.add_cost(row["currency"], row["cost"])
        return self

    def __iadd__(self, other: Totals) -> Totals:
        self.count += other.count
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        for k in PART_SUMS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.unknown_cost += other.unknown_cost
        for cur, v in other.costs.items():
            self.add_cost(cur, v)
        return self

    def __add__(self, other: Totals) -> Totals:
        out = Totals(costs={})
        out += self
        out += other
        return out

    @classmethod
    def of_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Totals:
        t = cls()
        for row in rows:
            t.add_row(row)
        return t

    @classmethod
    def of_records(cls, records: Iterable[Any]) -> Totals:
        t = cls()
        for rec in records:
            t.add_record(rec)
        return t

    # -- output --------------------------------------------------------------------------
    def to_dict(self, plain: bool = False) -> dict[str, Any]:
        """``count``, the token sums (and the finer part sums), ``total_tokens``, ``unknown_cost``, ``costs`` (per
        currency) and — so a reader can never add currencies by mistake — ``cost`` and
        ``currency`` only as one number: the single currency's cost, or None for both when
        the totals hold several. ``plain=True`` writes money as exact decimal strings."""
        money = _plain if plain else (lambda d: d)
        single = None if len(self.currencies) > 1 else self.cost()
        return {
            "count": self.count,
            **{k: getattr(self, k) for k in TOKEN_SUMS},
            **{k: getattr(self, k) for k in PART_SUMS},
            "total_tokens": self.total_tokens,
            "unknown_cost": self.unknown_cost,
            "cost": None if single is None else money(single),
            "currency": self.currency,
            "costs": {c: money(v) for c, v in sorted(self.costs.items())},
        }
