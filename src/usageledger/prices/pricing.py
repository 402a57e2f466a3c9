"""Cost of a call from its token counts, with genai-prices' offline price tables.

Token convention (the one every usageledger record uses): ``input_tokens`` EXCLUDES
``cache_read_tokens`` and ``cache_write_tokens`` — the three are disjoint, so cached input
is never charged twice. genai-prices counts cache tokens inside ``input_tokens``; the
conversion happens here, in one place.

Prices come from the data shipped inside the genai-prices package (nothing is fetched at
run time). A model's rates are looked up once and cached, so pricing a record afterwards
is a dict lookup and four multiplications. Results are exact Decimals (USD).

Overrides: ``prices={"gpt-4o": {...}, "openai/my-finetune": {...}}`` keyed by model name
or ``provider/model``, each with per-1M-token prices ``input`` and ``output`` (required)
and ``cache_read`` / ``cache_write`` (default: the input price), as Decimal, str or int
(floats are taken through their shortest repr). An override wins over the tables.

An unknown model gives ``None`` and one warning per model in the log, never an exception.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from ..schema.limits import short
from ..schema.records import UsageRecord, check_cost, make_usage_record

__all__ = ["calculate_cost", "price_record", "check_prices", "Rates", "PRICE_KEYS", "PART_PRICE_KEYS"]

log = logging.getLogger("usageledger.pricing")

PRICE_KEYS = ("input", "output", "cache_read", "cache_write")
#: optional override keys: prices of the token kinds within the four above (default: the
#: price of the kind they are part of); "cache_write" is then the 5-minute write price
PART_PRICE_KEYS = ("cache_write_1h", "input_audio", "output_audio", "input_image", "output_image",
                   "reasoning")
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per 1M tokens for the four disjoint token kinds, and for the finer kinds within
    them where the table prices them apart (None: the price of the kind they are part of):
    ``cache_write_1h`` (1-hour cache writes; ``cache_write`` is then the 5-minute price),
    ``input_audio``/``input_image`` (parts of the uncached input), ``output_audio``/
    ``output_image``/``reasoning`` (parts of the output). ``per_request``: USD added once
    per call. ``tiers``: genai-prices' threshold tiers as ``(start, Rates)`` pairs, chosen
    by the total input tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    tiers: tuple[tuple[int, Rates], ...] = ()
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    input_image: Decimal | None = None
    output_image: Decimal | None = None
    reasoning: Decimal | None = None
    per_request: Decimal = _ZERO

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
             *, cache_write_1h: int = 0, input_audio: int = 0, output_audio: int = 0,
             input_image: int = 0, output_image: int = 0, reasoning: int = 0) -> Decimal:
        """Exact cost; the keyword counts are parts of the positional ones (as on a record)."""
        rates = self
        if self.tiers:
            # genai-prices' "cliff" tiers: crossing a threshold prices every token at that tier
            total_input = input_tokens + cache_read + cache_write
            for start, tier in reversed(self.tiers):
                if total_input > start:
                    rates = tier
                    break
        base = (input_tokens * rates.input + output_tokens * rates.output
                + cache_read * rates.cache_read + cache_write * rates.cache_write)
        if cache_write_1h or input_audio or output_audio or input_image or output_image or (
                reasoning and rates.reasoning is not None):
            # each part moves from the price of its whole to its own price
            base += (rates._part(cache_write_1h, rates.cache_write_1h, rates.cache_write)
                     + rates._part(input_audio, rates.input_audio, rates.input)
                     + rates._part(input_image, rates.input_image, rates.input)
                     + rates._part(output_audio, rates.output_audio, rates.output)
                     + rates._part(output_image, rates.output_image, rates.output))
            if reasoning and rates.reasoning is not None:
                # reasoning is priced apart only where the table says so; never more of it
                # than the output left after its audio and image parts
                rest = max(output_tokens - output_audio - output_image, 0)
                base += rates._part(min(reasoning, rest), rates.reasoning, rates.output)
        return base / _MILLION + rates.per_request

    @staticmethod
    def _part(count: int, price: Decimal | None, whole: Decimal) -> Decimal:
        return count * (price - whole) if count and price is not None else _ZERO

    def record_cost(self, r: UsageRecord) -> Decimal:
        """Exact cost of a record's tokens (every kind it carries) at these rates."""
        return self.cost(r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens,
                         cache_write_1h=r.cache_write_1h_tokens, input_audio=r.input_audio_tokens,
                         output_audio=r.output_audio_tokens, input_image=r.input_image_tokens,
                         output_image=r.output_image_tokens, reasoning=r.reasoning_tokens)


class _Checked(dict):
    """Overrides already validated by :func:`check_prices` (keys lower-cased)."""


def _price_value(where: str, value: Any) -> Decimal:
    # the same conversion as a record's cost (floats through their repr), named for prices
    try:
        price = check_cost(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"{where} must be a finite non-negative price per 1M tokens "
            f"(Decimal, str, int or float), got {value!r}"
        ) from None
    if price is None:
        raise TypeError(f"{where} must be a price per 1M tokens, got None")
    return price


def check_prices(prices: Mapping[str, Mapping[str, Any]] | None) -> Mapping[str, Rates] | None:
    """Validate price overrides once (``ValueError``/``TypeError`` naming the model and
    key); the result can be passed as ``prices=`` without being checked again."""
    if prices is None or type(prices) is _Checked:
        return prices
    if not isinstance(prices, Mapping):
        raise TypeError(f"prices must be a mapping of model -> prices, got {prices!r}")
    checked = _Checked()
    for model, entry in prices.items():
        if not isinstance(model, str) or not model:
            raise TypeError(f"prices keys must be model names or 'provider/model', got {model!r}")
        if isinstance(entry, Rates):
            checked[model.lower()] = entry
            continue
        if not isinstance(entry, Mapping):
            raise TypeError(f"prices[{model!r}] must be a mapping with {PRICE_KEYS}, got {entry!r}")
        unknown = set(entry) - set(PRICE_KEYS) - set(PART_PRICE_KEYS)
        if unknown:
            raise ValueError(f"prices[{model!r}] has unknown keys {sorted(unknown)}; "
                             f"use {PRICE_KEYS} and optionally {PART_PRICE_KEYS}")
        missing = [k for k in ("input", "output") if k not in entry]
        if missing:
            raise ValueError(f"prices[{model!r}] needs {missing} (USD per 1M tokens)")
        values = {k: _price_value(f"prices[{model!r}][{k!r}]", v) for k, v in entry.items()}
        checked[model.lower()] = Rates(
            values["input"], values["output"],
            values.get("cache_read", values["input"]), values.get("cache_write", values["input"]),
            **{k: values[k] for k in PART_PRICE_KEYS if k in values},
        )
    return checked


# -- genai-prices tables ------------------------------------------------------------------------

_cache: dict[tuple[str | None, str], Any] = {}  # -> Rates | ModelInfo (time-dependent) | None
_warned: set[tuple[str | None, str]] = set()
#: distinct unknown models warned about by name; past this, one last warning says so (a
#: collector receiving made-up model names must not grow this set or its log forever)
_MAX_WARNED = 1000
_lock = threading.Lock()
_UNKNOWN = None


#: Rates field -> genai-prices price key, for the kinds priced apart when the table has them
_PART_KEYS = {
    "cache_write_1h": "cache_write_1h_mtok",
    "input_audio": "input_audio_mtok",
    "output_audio": "output_audio_mtok",
    "input_image": "input_image_mtok",
    "output_image": "output_image_mtok",
    "reasoning": "output_reasoning_mtok",
}


def _rates_from(model_price: Any) -> Rates:
    """Rates from a genai-prices ModelPrice. A missing cache price means genai-prices
    charges those tokens as input, which is what falling back to the input price does; a
    missing part price (audio, image, 1-hour cache write...) is the price of its whole."""
    from genai_prices.types import TieredPrices

    raw = {
        "input": model_price.input_mtok,
        "output": model_price.output_mtok,
        "cache_read": model_price.cache_read_mtok,
        "cache_write": getattr(model_price, "cache_write_5m_mtok", None) or model_price.cache_write_mtok,
    }
    if raw["cache_read"] is None:
        raw["cache_read"] = raw["input"]
    if raw["cache_write"] is None:
        raw["cache_write"] = raw["input"]
    if raw["cache_write"] is not model_price.cache_write_mtok and model_price.cache_write_1h_mtok is None:
        # a table that prices only the 5-minute writes apart: the others at the general price
        raw["cache_write_1h"] = model_price.cache_write_mtok
    for field, key in _PART_KEYS.items():
        v = getattr(model_price, key, None)
        if v is not None:
            raw[field] = v
    requests = getattr(model_price, "requests_kcount", None)

    def value(v: Any, tier_index: int | None) -> Decimal | None:
        if isinstance(v, TieredPrices):
            return v.base if tier_index is None else _tier_price(v, tier_index)
        return v

    def at(tier_index: int | None) -> Rates:
        main = [value(raw[k], tier_index) or _ZERO for k in PRICE_KEYS]
        parts = {k: value(raw[k], tier_index) for k in _PART_KEYS if raw.get(k) is not None}
        # a fee per 1,000 requests is charged once per call
        per_request = value(requests, tier_index) / 1000 if requests is not None else _ZERO
        return Rates(*main, **parts, per_request=per_request)

    starts = sorted({t.start for v in (*raw.values(), requests) if isinstance(v, TieredPrices) for t in v.tiers})
    base = at(None)
    if not starts:
        return base
    return dataclasses.replace(base, tiers=tuple((s, at(s)) for s in starts))


def _tier_price(prices: Any, start: int) -> Decimal:
    price = prices.base
    for tier in prices.tiers:
        if tier.start <= start:
            price = tier.price
    return price


@dataclass(frozen=True, slots=True)
class _Variants:
    """A fixed table price with request-specific variants (batch, flex, priority...):
    the standard Rates for calls without a tier, the ModelInfo to resolve the others."""

    standard: Rates
    info: Any


def _lookup(provider: str | None, model: str) -> Any:
    """Rates (fixed prices), :class:`_Variants` (fixed prices with service-tier variants),
    the genai-prices ModelInfo (prices that change over time), or None for an unknown
    model; cached per (provider, model). :func:`table_rates` turns any of them into Rates."""
    key = (provider, model)
    try:
        return _cache[key]
    except KeyError:
        pass
    from genai_prices.data_snapshot import get_snapshot
    from genai_prices.types import ModelPrice

    snapshot = get_snapshot()
    found = None
    for provider_id in ((provider, None) if provider else (None,)):
        try:
            found = snapshot.find_provider_model(model, None, provider_id, None)[1]
            break
        except LookupError:
            continue
    if found is None:
        value = _UNKNOWN
    elif isinstance(found.prices, ModelPrice):
        value = _rates_from(found.prices)
        if found.price_variants:
            value = _Variants(value, found)
    else:
        value = found
    with _lock:
        _cache[key] = value
    return value


def price_context(service_tier: str | None) -> dict[str, str] | None:
    """genai-prices' request context for a record's ``service_tier``: ``"batch"`` selects
    the batch prices (``processing``), ``"fast"`` also Anthropic's fast mode (``speed``),
    any other value the variant of that ``service_tier`` (flex, priority...); a tier the
    table does not list is priced at the standard price."""
    if service_tier is None:
        return None
    tier = service_tier.lower()
    context = {"service_tier": tier}
    if tier == "batch":
        context["processing"] = "batch"
    elif tier == "fast":
        context["speed"] = "fast"
    return context


def table_rates(found: Any, at: datetime | None = None, service_tier: str | None = None) -> Rates:
    """The Rates of a :func:`_lookup` result for a call at ``at`` (default now) served at
    ``service_tier``."""
    if isinstance(found, Rates):
        return found
    if isinstance(found, _Variants):
        if service_tier is None:
            return found.standard
        found = found.info
    at = at or datetime.now(UTC)
    # prices that change only by date (start dates, not times of day) are the same all of
    # a UTC day: cached per (model, tier, day), so a batch of tiered records resolves once
    key = (id(found), service_tier, (at.astimezone(UTC) if at.tzinfo else at).date()) if _by_day(found) else None
    rates = _day_cache.get(key) if key is not None else None
    if rates is None:
        rates = _rates_from(found.get_prices(at, price_context(service_tier)))
        if key is not None:
            with _lock:
                if len(_day_cache) >= _MAX_DAY_CACHE:
                    _day_cache.clear()
                _day_cache[key] = rates
    return rates


_day_cache: dict[tuple[int, str | None, Any], Rates] = {}
_MAX_DAY_CACHE = 4096


def _by_day(info: Any) -> bool:
    """Whether every price of ``info`` (a ModelInfo) changes by UTC date only."""
    from genai_prices.types import StartDateConstraint

    constraints = [v.constraint for v in info.price_variants or ()]
    if isinstance(info.prices, list):
        constraints += [c.constraint for c in info.prices]
    return all(c is None or isinstance(c, StartDateConstraint) for c in constraints)


def _warn_unknown(provider: str | None, model: str) -> None:
    key = (provider, model)
    if key in _warned or len(_warned) > _MAX_WARNED:
        return
    with _lock:
        if key in _warned or len(_warned) > _MAX_WARNED:
            return
        _warned.add(key)
    if len(_warned) > _MAX_WARNED:
        log.warning("no price known for more than %d models: no more warnings about unknown models", _MAX_WARNED)
        return
    # short(): escaped (a newline in a model name cannot start a forged log line) and cut
    log.warning(
        "no price known for model %s (provider %s): its cost is recorded as unknown; "
        "pass prices={%s: {'input': ..., 'output': ...}} to price it",
        short(model), short(provider), short(model),
    )


def _check_count(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return value


def calculate_cost(
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    *,
    provider: str | None = None,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    prices: Mapping[str, Any] | None = None,
    at: datetime | None = None,
    service_tier: str | None = None,
    **parts: int,
) -> Decimal | None:
    """Exact USD cost of one call, or None when the model's price is unknown (logged once
    per model). ``input_tokens`` excludes the cache tokens. ``at`` picks time-dependent
    prices (default: now), ``service_tier`` the tier's prices (``"batch"``, ``"flex"``,
    ``"priority"``...). ``parts``: the finer counts of a record (``cache_write_1h_tokens``,
    ``input_audio_tokens``, ``output_audio_tokens``, ``input_image_tokens``,
    ``output_image_tokens``, and ``reasoning_tokens``), each within its whole."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    if provider is not None and not isinstance(provider, str):
        raise TypeError(f"provider must be a string or None, got {provider!r}")
    if type(input_tokens) is not int or input_tokens < 0:
        _check_count("input_tokens", input_tokens)
    if type(output_tokens) is not int or output_tokens < 0:
        _check_count("output_tokens", output_tokens)
    if type(cache_read_tokens) is not int or cache_read_tokens < 0:
        _check_count("cache_read_tokens", cache_read_tokens)
    if type(cache_write_tokens) is not int or cache_write_tokens < 0:
        _check_count("cache_write_tokens", cache_write_tokens)
    counts = {}
    if parts:
        record = _parts_record(model, input_tokens, output_tokens, cache_read_tokens,
                               cache_write_tokens, service_tier, parts)
        counts = _part_counts(record)
    provider_key = provider.lower() if provider else None
    model_key = model.lower()
    if prices is not None:
        table = check_prices(prices)
        assert table is not None
        rates = (table.get(f"{provider_key}/{model_key}") if provider_key else None) or table.get(model_key)
        if rates is not None:
            return rates.cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, **counts)
    found = _lookup(provider_key, model)
    if found is None:
        _warn_unknown(provider_key, model)
        return None
    rates = table_rates(found, at, service_tier)
    return rates.cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, **counts)


_PART_ARGS = {"cache_write_1h_tokens": "cache_write_1h", "input_audio_tokens": "input_audio",
              "output_audio_tokens": "output_audio", "input_image_tokens": "input_image",
              "output_image_tokens": "output_image", "reasoning_tokens": "reasoning"}


def _parts_record(model: str, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
                  service_tier: str | None, parts: dict[str, int]) -> UsageRecord:
    # the record's own validation: the same counts are refused here and in make_usage_record
    unknown = set(parts) - set(_PART_ARGS)
    if unknown:
        raise TypeError(f"calculate_cost() got unknown token counts {sorted(unknown)}; use {sorted(_PART_ARGS)}")
    return make_usage_record("-", model, input_tokens, output_tokens, cache_read_tokens=cache_read,
                             cache_write_tokens=cache_write, service_tier=service_tier, **parts)


def _part_counts(r: UsageRecord) -> dict[str, int]:
    return {"cache_write_1h": r.cache_write_1h_tokens, "input_audio": r.input_audio_tokens,
            "output_audio": r.output_audio_tokens, "input_image": r.input_image_tokens,
            "output_image": r.output_image_tokens, "reasoning": r.reasoning_tokens}


def record_rates(record: UsageRecord, prices: Mapping[str, Any] | None = None) -> Rates | None:
    """The Rates that price ``record`` (an override in ``prices``, else the table at its
    time and service tier), or None when unknown (logged once per model)."""
    provider_key = record.provider.lower()
    if prices is not None:
        table = check_prices(prices)
        assert table is not None
        rates = table.get(f"{provider_key}/{record.model.lower()}") or table.get(record.model.lower())
        if rates is not None:
            return rates
    found = _lookup(provider_key, record.model)
    if found is None:
        _warn_unknown(provider_key, record.model)
        return None
    return table_rates(found, record.timestamp, record.service_tier)


def price_record(record: UsageRecord, prices: Mapping[str, Any] | None = None) -> UsageRecord:
    """``record`` with its cost filled in from its tokens (prices at its timestamp and
    service tier, every token kind at its price), or unchanged when it has a cost already
    or its model's price is unknown."""
    if record.cost is not None:
        return record
    rates = record_rates(record, prices)
    if rates is None:
        return record
    return msgspec.structs.replace(record, cost=rates.record_cost(record))
