"""Every token kind and tier of the price table, priced by usageledger exactly as by
genai-prices' own calculator: every model of every provider, at the standard price and at
each of its service-tier variants (batch, flex, priority, fast), with input, output, cache
reads, 5-minute and 1-hour cache writes, audio and image input and output, and reasoning
tokens all non-zero, per-request fees and threshold tiers included."""

from __future__ import annotations

import random
import warnings
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage
from genai_prices.data import providers
from genai_prices.data_snapshot import get_snapshot

from usageledger.pricing import calculate_cost, price_context, price_record
from usageledger.records import make_usage_record

AT = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _tier(when: dict[str, str]) -> str | None:
    """The record's service_tier that selects a table variant, or None for a variant no
    tier selects (a route, a search type)."""
    if when.get("processing") == "batch":
        return "batch"
    if "speed" in when:
        return "fast"
    return when.get("service_tier")


def _cases():
    snapshot = get_snapshot()
    for p in providers:
        for m in p.models:
            try:  # only models that their own id finds (else a lookup prices another model)
                if snapshot.find_provider_model(m.id, None, p.id, None)[1] is not m:
                    continue
            except LookupError:
                continue
            tiers = {None, *(_tier(v.when) for v in m.price_variants or ())} - {None}
            for tier in (None, *sorted(tiers)):
                yield p, m, tier


def _counts(rnd: random.Random) -> dict[str, int]:
    inp, out = rnd.randrange(1, 400_000), rnd.randrange(1, 50_000)
    cw = rnd.randrange(1, 50_000)
    ia = rnd.randrange(1, inp // 2 + 2) if inp > 2 else 0
    oa = rnd.randrange(0, out // 2 + 1)
    oi = rnd.randrange(0, out - oa + 1)
    return {"input_tokens": inp, "output_tokens": out, "cache_read_tokens": rnd.randrange(1, 100_000),
            "cache_write_tokens": cw, "cache_write_1h_tokens": rnd.randrange(0, cw + 1),
            "input_audio_tokens": min(ia, inp), "input_image_tokens": rnd.randrange(0, inp - min(ia, inp) + 1),
            "output_audio_tokens": oa, "output_image_tokens": oi,
            "reasoning_tokens": rnd.randrange(0, out - oa - oi + 1)}


def _genai_usage(c: dict[str, int]) -> Usage:
    """The same call in genai-prices' convention: input counts every input token, cached
    audio and image reads are none (a record's audio and image are uncached input)."""
    return Usage(
        input_tokens=c["input_tokens"] + c["cache_read_tokens"] + c["cache_write_tokens"],
        output_tokens=c["output_tokens"], cache_read_tokens=c["cache_read_tokens"],
        cache_write_tokens=c["cache_write_tokens"], cache_write_1h_tokens=c["cache_write_1h_tokens"],
        cache_write_5m_tokens=c["cache_write_tokens"] - c["cache_write_1h_tokens"],
        input_audio_tokens=c["input_audio_tokens"], input_image_tokens=c["input_image_tokens"],
        output_audio_tokens=c["output_audio_tokens"], output_image_tokens=c["output_image_tokens"],
        output_reasoning_tokens=c["reasoning_tokens"], cache_audio_read_tokens=0,
        cache_image_read_tokens=0, cache_audio_write_tokens=0, cache_image_write_tokens=0)


def test_every_model_every_kind_every_tier_matches_the_table():
    rnd = random.Random(18)
    seen = {"tiers": set(), "keys": set()}
    n = 0
    for provider, model, tier in _cases():
        c = _counts(rnd)
        rec = make_usage_record(provider.id, model.id, timestamp=AT, service_tier=tier, **c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # genai-prices warns about price keys it skips
            want = model.calc_price(_genai_usage(c), provider, genai_request_timestamp=AT,
                                    price_context=price_context(tier)).total_price
        got = price_record(rec).cost
        assert got == want, (provider.id, model.id, tier, c)
        parts = {k: v for k, v in c.items() if k not in ("input_tokens", "output_tokens", "cache_read_tokens",
                                                        "cache_write_tokens")}
        assert calculate_cost(model.id, c["input_tokens"], c["output_tokens"], provider=provider.id,
                              cache_read_tokens=c["cache_read_tokens"], cache_write_tokens=c["cache_write_tokens"],
                              at=AT, service_tier=tier, **parts) == want
        seen["tiers"].add(tier)
        prices = model.get_prices(AT, price_context(tier))
        seen["keys"] |= {k for k, v in prices.__dict__.items() if v is not None}
        n += 1
    # the comparison covered what the issue names: each tier and each kind priced apart
    assert {"batch", "flex", "priority", "fast"} <= seen["tiers"]
    assert {"cache_write_1h_mtok", "input_audio_mtok", "output_audio_mtok", "input_image_mtok",
            "output_image_mtok", "output_reasoning_mtok", "requests_kcount"} <= seen["keys"]
    assert n > 1000


@pytest.mark.parametrize(("fields", "message"), [
    ({"cache_write_tokens": 5, "cache_write_1h_tokens": 6}, "cache_write_1h_tokens (6) must be at most cache_write_tokens (5)"),
    ({"input_tokens": 10, "input_audio_tokens": 6, "input_image_tokens": 5}, "must be at most input_tokens (10)"),
    ({"output_tokens": 1, "output_audio_tokens": 2}, "output_audio_tokens (2) must be at most output_tokens (1)"),
    ({"input_audio_tokens": -1}, "input_audio_tokens must be a non-negative integer"),
    ({"service_tier": ""}, "service_tier must be a non-empty string"),
    ({"service_tier": "x" * 300}, "service_tier must be at most 256 characters"),
])
def test_parts_larger_than_their_whole_are_refused_naming_the_fields(fields, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        make_usage_record("openai", "gpt-audio", **fields)
    with pytest.raises((ValueError, TypeError), match="input_audio_tokens"):
        calculate_cost("gpt-audio", 1, 0, provider="openai", input_audio_tokens=2)


def test_in_process_overrides_take_part_prices():
    prices = {"openai/voice": {"input": "2", "output": "8", "input_audio": "40", "cache_write_1h": "4"}}
    cost = calculate_cost("voice", 1000, 10, provider="openai", cache_write_tokens=300, prices=prices,
                          input_audio_tokens=600, cache_write_1h_tokens=100)
    assert cost == Decimal(400 * 2 + 600 * 40 + 10 * 8 + 200 * 2 + 100 * 4) / 1_000_000
    with pytest.raises(ValueError, match="unknown keys"):
        calculate_cost("voice", 1, 1, prices={"voice": {"input": "1", "output": "1", "video": "1"}})


def test_a_tier_price_applies_from_its_start_date():
    """The table's batch prices of claude-opus-4-5 start on a date: a batch record of the
    day before is priced at the standard price, one of that day at the batch price (also
    when the day before was priced first: prices are cached per UTC day)."""
    from genai_prices import calc_price

    def cost(day, tier):
        rec = make_usage_record("anthropic", "claude-opus-4-5", 1000, 100, service_tier=tier,
                                timestamp=datetime.fromisoformat(day + "T23:59:59+00:00"))
        return price_record(rec).cost

    context = price_context("batch")
    start = next(v.constraint.start_date for v in get_snapshot().find_provider_model(
        "claude-opus-4-5", None, "anthropic", None)[1].price_variants if v.when == {"processing": "batch"})
    before, on = start.fromordinal(start.toordinal() - 1).isoformat(), start.isoformat()
    assert cost(before, "batch") == cost(before, None)
    assert cost(on, "batch") == calc_price(Usage(input_tokens=1000, output_tokens=100), "claude-opus-4-5",
                                           provider_id="anthropic", price_context=context,
                                           genai_request_timestamp=datetime.fromisoformat(on + "T12:00:00+00:00")
                                           ).total_price
    assert cost(on, "batch") * 2 == cost(on, None)
    assert cost(before, "batch") == cost(before, None)  # the cache keeps the days apart
