"""Pricing: genai-prices' own figures, the cache-token convention, overrides, unknown models."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

import usageledger
from usageledger.pricing import calculate_cost, check_prices, price_record
from usageledger.records import make_usage_record

CASES = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-3.5-turbo", None),  # no cache prices: cached input is charged as input
    ("claude-sonnet-4-5", "anthropic"),  # tiered prices above 200k input tokens
    ("claude-3-5-haiku-latest", "anthropic"),
    ("gemini-2.5-pro", "google"),
]


@pytest.mark.parametrize("model, provider", CASES)
@pytest.mark.parametrize("tokens", [(1000, 200, 0, 0), (1000, 200, 5000, 300), (250_000, 10, 9, 7),
                                    (0, 0, 0, 0)])
def test_matches_genai_prices_own_calculation(model, provider, tokens):
    inp, out, cr, cw = tokens
    ours = calculate_cost(model, inp, out, provider=provider, cache_read_tokens=cr,
                          cache_write_tokens=cw)
    # genai-prices counts cache tokens inside input_tokens; ours keeps them apart
    theirs = calc_price(Usage(input_tokens=inp + cr + cw, output_tokens=out,
                              cache_read_tokens=cr, cache_write_tokens=cw),
                        model, provider_id=provider).total_price
    assert isinstance(ours, Decimal)
    assert ours == theirs


def test_cached_input_is_not_charged_twice():
    plain = calculate_cost("gpt-4o", 1_000_000, 0, provider="openai")
    cached = calculate_cost("gpt-4o", 0, 0, provider="openai", cache_read_tokens=1_000_000)
    both = calculate_cost("gpt-4o", 1_000_000, 0, provider="openai", cache_read_tokens=1_000_000)
    assert plain == Decimal("2.5") and cached == Decimal("1.25")
    assert both == plain + cached


def test_overrides_by_model_and_by_provider_model():
    prices = {
        "my-model": {"input": "1", "output": 2, "cache_read": Decimal("0.1")},
        "acme/my-model": {"input": 0.5, "output": "0.75", "cache_write": "3"},
        "gpt-4o": {"input": "100", "output": "100"},
    }
    assert calculate_cost("my-model", 1_000_000, 1_000_000, prices=prices) == Decimal(3)
    assert calculate_cost("my-model", 0, 0, cache_read_tokens=10, cache_write_tokens=10,
                          prices=prices) == Decimal("0.000011")  # cache_write defaults to input
    assert calculate_cost("My-Model", 2_000_000, 0, provider="ACME", prices=prices) == Decimal("1.0")
    assert calculate_cost("my-model", 0, 0, provider="acme", cache_write_tokens=1_000_000,
                          prices=prices) == Decimal(3)
    assert calculate_cost("gpt-4o", 1, 0, provider="openai", prices=prices) == Decimal("0.0001")


@pytest.mark.parametrize(
    "prices, error, match",
    [
        ({"m": {"input": "1"}}, ValueError, r"prices\['m'\] needs \['output'\]"),
        ({"m": {"input": "1", "output": "x"}}, ValueError, r"prices\['m'\]\['output'\]"),
        ({"m": {"input": -1, "output": 1}}, ValueError, "non-negative"),
        ({"m": {"input": 1, "output": 1, "cached": 1}}, ValueError, "unknown keys"),
        ({"m": {"input": True, "output": 1}}, TypeError, "input"),
        ({"m": {"input": float("nan"), "output": 1}}, ValueError, "finite"),
        ({"m": 3}, TypeError, "mapping"),
        ([("m", 1)], TypeError, "mapping"),
    ],
)
def test_bad_overrides_are_refused_with_the_model_and_key(prices, error, match):
    with pytest.raises(error, match=match):
        check_prices(prices)
    with pytest.raises(error, match=match):
        calculate_cost("m", 1, 1, prices=prices)


def test_unknown_model_gives_none_and_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="usageledger.pricing"):
        assert calculate_cost("no-such-model-xyz", 10, 10) is None
        assert calculate_cost("no-such-model-xyz", 20, 20) is None
        assert calculate_cost("no-such-model-abc", 1, 1, provider="nobody") is None
    warnings = [r for r in caplog.records if r.name == "usageledger.pricing"]
    assert len(warnings) == 2
    assert "no-such-model-xyz" in warnings[0].getMessage()


def test_bad_token_counts_raise():
    with pytest.raises(ValueError, match="input_tokens"):
        calculate_cost("gpt-4o", -1)
    with pytest.raises(ValueError, match="cache_read_tokens"):
        calculate_cost("gpt-4o", cache_read_tokens=1.5)
    with pytest.raises(ValueError, match="model"):
        calculate_cost("", 1)


def test_price_record_fills_only_missing_costs():
    rec = make_usage_record("openai", "gpt-4o", 1000, 100, cache_read_tokens=1000,
                            timestamp=datetime(2025, 6, 1, tzinfo=UTC))
    priced = price_record(rec)
    assert priced.cost == calculate_cost("gpt-4o", 1000, 100, provider="openai",
                                         cache_read_tokens=1000)
    assert priced.id == rec.id and priced.input_tokens == 1000
    given = make_usage_record("openai", "gpt-4o", 1000, 100, cost="9")
    assert price_record(given) is given
    unknown = make_usage_record("x", "no-such-model-zzz", 1, 1)
    assert price_record(unknown).cost is None


def test_exported_lazily_from_the_package():
    assert usageledger.calculate_cost is calculate_cost
