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

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from .limits import short
from .records import UsageRecord, check_cost

__all__ = ["calculate_cost", "price_record", "check_prices", "Rates", "PRICE_KEYS"]

log = logging.getLogger("usageledger.pricing")

PRICE_KEYS = ("input", "output", "cache_read", "cache_write")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per 1M tokens for the four disjoint token kinds. ``tiers``: genai-prices'
    threshold tiers as ``(start, Rates)`` pairs, chosen by the total input tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    tiers: tuple[tuple[int, Rates], ...] = ()

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> Decimal:
        rates = self
        if self.tiers:
            # genai-prices' "cliff" tiers: crossing a threshold prices every token at that tier
            total_input = input_tokens + cache_read + cache_write
            for start, tier in reversed(self.tiers):
                if total_input > start:
                    rates = tier
                    break
        return (
            input_tokens * rates.input + output_tokens * rates.output
            + cache_read * rates.cache_read + cache_write * rates.cache_write
        ) / _MILLION


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
        unknown = set(entry) - set(PRICE_KEYS)
        if unknown:
            raise ValueError(f"prices[{model!r}] has unknown keys {sorted(unknown)}; use {PRICE_KEYS}")
        missing = [k for k in ("input", "output") if k not in entry]
        if missing:
            raise ValueError(f"prices[{model!r}] needs {missing} (USD per 1M tokens)")
        values = {k: _price_value(f"prices[{model!r}][{k!r}]", v) for k, v in entry.items()}
        checked[model.lower()] = Rates(
            values["input"], values["output"],
            values.get("cache_read", values["input"]), values.get("cache_write", values["input"]),
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


def _rates_from(model_price: Any) -> Rates:
    """Rates from a genai-prices ModelPrice. A missing cache price means genai-prices
    charges those tokens as input, which is what falling back to the input price does."""
    from genai_prices.types import TieredPrices

    raw = {
        "input": model_price.input_mtok,
        "output": model_price.output_mtok,
        "cache_read": model_price.cache_read_mtok,
        "cache_write": model_price.cache_write_mtok,
    }
    if raw["cache_read"] is None:
        raw["cache_read"] = raw["input"]
    if raw["cache_write"] is None:
        raw["cache_write"] = raw["input"]

    def at(tier_index: int | None) -> Rates:
        out = []
        for k in PRICE_KEYS:
            v = raw[k]
            if v is None:
                out.append(Decimal(0))
            elif isinstance(v, TieredPrices):
                out.append(v.base if tier_index is None else _tier_price(v, tier_index))
            else:
                out.append(v)
        return Rates(*out)

    starts = sorted({t.start for v in raw.values() if isinstance(v, TieredPrices) for t in v.tiers})
    base = at(None)
    if not starts:
        return base
    return Rates(base.input, base.output, base.cache_read, base.cache_write,
                 tuple((s, at(s)) for s in starts))


def _tier_price(prices: Any, start: int) -> Decimal:
    price = prices.base
    for tier in prices.tiers:
        if tier.start <= start:
            price = tier.price
    return price


def _lookup(provider: str | None, model: str) -> Any:
    """Rates (fixed prices), the genai-prices ModelInfo (prices that change over time), or
    None for an unknown model; cached per (provider, model)."""
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
    else:
        value = found
    with _lock:
        _cache[key] = value
    return value


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
) -> Decimal | None:
    """Exact USD cost of one call, or None when the model's price is unknown (logged once
    per model). ``input_tokens`` excludes the cache tokens. ``at`` picks time-dependent
    prices (default: now)."""
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
    provider_key = provider.lower() if provider else None
    model_key = model.lower()
    if prices is not None:
        table = check_prices(prices)
        assert table is not None
        rates = (table.get(f"{provider_key}/{model_key}") if provider_key else None) or table.get(model_key)
        if rates is not None:
            return rates.cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
    found = _lookup(provider_key, model)
    if found is None:
        _warn_unknown(provider_key, model)
        return None
    if not isinstance(found, Rates):
        found = _rates_from(found.get_prices(at or datetime.now(UTC)))
    return found.cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)


def price_record(record: UsageRecord, prices: Mapping[str, Any] | None = None) -> UsageRecord:
    """``record`` with its cost filled in from its tokens (prices at its timestamp), or
    unchanged when it has a cost already or its model's price is unknown."""
    if record.cost is not None:
        return record
    cost = calculate_cost(
        record.model, record.input_tokens, record.output_tokens, provider=record.provider,
        cache_read_tokens=record.cache_read_tokens, cache_write_tokens=record.cache_write_tokens,
        prices=prices, at=record.timestamp,
    )
    if cost is None:
        return record
    return msgspec.structs.replace(record, cost=cost)
