"""Every token kind and tier, through the real SDKs against the fake provider server: the
recorded counts, and the cost charged for them, against the price table's published
prices. The expected cost is genai-prices' own: its usage extractor reads the very
response body the server sent, and its calculator prices it (an implementation
independent of ours, on the same table)."""

from __future__ import annotations

import json
from decimal import Decimal

import genai_prices
import pytest

import usageledger
from tests.integrations.helpers import MESSAGES
from tests.support.fake_llm_server import Answer
from usageledger.integrations.litellm import litellm_cost, usage_from_litellm
from usageledger.pricing import calculate_cost, price_context


def _table_cost(provider: str, body: dict, record, context=None, flavor: str | None = None) -> Decimal:
    extra = {"api_flavor": flavor} if flavor else {}
    # the body as a client decodes it (the server's JSON), the price at the record's time
    usage = genai_prices.extract_usage(json.loads(json.dumps(body)), provider_id=provider, **extra)
    return usage.calc_price(genai_request_timestamp=record.timestamp, price_context=context).total_price


def _answer(server, requested: str, usage: dict, **extra) -> Answer:
    answer = Answer(usage=usage, extra=extra or None, model=requested)
    server.answers[requested] = answer
    return answer


# -- OpenAI ---------------------------------------------------------------------------------------
AUDIO_USAGE = {"prompt_tokens": 1200, "completion_tokens": 500, "total_tokens": 1700,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 800},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 300,
                                             "accepted_prediction_tokens": 0,
                                             "rejected_prediction_tokens": 0}}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_audio_tokens_are_recorded_and_charged_at_the_audio_prices(stream, llm_server, instrumented,
                                                                          openai_client):
    _answer(llm_server, "gpt-audio", AUDIO_USAGE, service_tier="default")
    if stream:
        for _ in openai_client.chat.completions.create(model="gpt-audio", messages=MESSAGES, stream=True):
            pass
    else:
        openai_client.chat.completions.create(model="gpt-audio", messages=MESSAGES)
    [record] = instrumented.query()
    assert (record.model, record.input_tokens, record.output_tokens) == ("gpt-audio", 1200, 500)
    assert (record.input_audio_tokens, record.output_audio_tokens) == (800, 300)
    assert record.service_tier == "default"
    expected = _table_cost("openai", {"model": "gpt-audio", "usage": AUDIO_USAGE}, record, flavor="chat")
    assert record.cost == expected
    # the audio prices matter: text prices alone give far less
    assert calculate_cost("gpt-audio", 1200, 500, provider="openai") < expected


@pytest.mark.parametrize("model, tier", [("gpt-4o-mini", "priority"), ("gpt-5-mini", "flex")])
def test_openai_service_tier_of_the_response_picks_the_tier_price(model, tier, llm_server, instrumented,
                                                                  openai_client):
    usage = {"prompt_tokens": 20_000, "completion_tokens": 4_000, "total_tokens": 24_000,
             "prompt_tokens_details": {"cached_tokens": 5_000}}
    _answer(llm_server, model, usage, service_tier=tier)
    openai_client.chat.completions.create(model=model, messages=MESSAGES)
    [record] = instrumented.query()
    assert record.service_tier == tier and record.cache_read_tokens == 5_000
    body = {"model": model, "usage": usage}
    expected = _table_cost("openai", body, record, {"service_tier": tier}, flavor="chat")
    assert record.cost == expected
    assert expected != _table_cost("openai", body, record, flavor="chat")  # the tier has its own price


# -- Anthropic ------------------------------------------------------------------------------------
def _cache_usage(tier: str) -> dict:
    return {"input_tokens": 900, "output_tokens": 400, "cache_read_input_tokens": 12_000,
            "cache_creation_input_tokens": 5_000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1_500, "ephemeral_1h_input_tokens": 3_500},
            "service_tier": tier}


def test_anthropic_5m_and_1h_cache_writes_are_charged_at_their_own_prices(llm_server, instrumented,
                                                                           anthropic_client):
    usage = _cache_usage("standard")
    _answer(llm_server, "claude-opus-4-5", usage)
    anthropic_client.messages.create(model="claude-opus-4-5", max_tokens=10, messages=MESSAGES)
    [record] = instrumented.query()
    assert (record.cache_write_tokens, record.cache_write_1h_tokens) == (5_000, 3_500)
    assert (record.input_tokens, record.cache_read_tokens, record.service_tier) == (900, 12_000, "standard")
    expected = _table_cost("anthropic", {"model": "claude-opus-4-5", "usage": usage}, record)
    assert record.cost == expected
    # all writes at the 5-minute price would be less: the 1-hour price is higher
    assert calculate_cost("claude-opus-4-5", 900, 400, provider="anthropic", cache_read_tokens=12_000,
                          cache_write_tokens=5_000) < expected


def test_anthropic_batch_tier_record_is_charged_the_batch_price(llm_server, instrumented, anthropic_client):
    usage = _cache_usage("batch")
    _answer(llm_server, "claude-sonnet-4-5", usage)
    anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
    [record] = instrumented.query()
    assert record.service_tier == "batch"
    body = {"model": "claude-sonnet-4-5", "usage": usage}
    expected = _table_cost("anthropic", body, record, {"processing": "batch"})
    assert record.cost == expected
    assert expected * 2 == _table_cost("anthropic", body, record)  # the table's batch discount: half


def test_anthropic_stream_records_the_1h_cache_writes(llm_server, instrumented, anthropic_client):
    usage = _cache_usage("standard")
    _answer(llm_server, "claude-haiku-4-5", usage)
    with anthropic_client.messages.stream(model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES) as s:
        s.get_final_message()
    [record] = instrumented.query()
    assert (record.cache_write_tokens, record.cache_write_1h_tokens) == (5_000, 3_500)
    assert record.cost == _table_cost("anthropic", {"model": "claude-haiku-4-5", "usage": usage}, record)


# -- LiteLLM (its callback's usage shape) ---------------------------------------------------------
def test_litellm_usage_keeps_audio_1h_writes_and_tier_and_prices_them():
    from litellm import ModelResponse

    response = ModelResponse(model="claude-opus-4-5", usage={
        "prompt_tokens": 18_900, "completion_tokens": 400, "cache_read_input_tokens": 12_000,
        "cache_creation_input_tokens": 5_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_500, "ephemeral_1h_input_tokens": 3_500}})
    kwargs = {"model": "claude-opus-4-5", "litellm_params": {"custom_llm_provider": "anthropic"}}
    fields = usage_from_litellm(kwargs, response)
    assert (fields["input_tokens"], fields["cache_write_1h_tokens"]) == (1_900, 3_500)
    record = usageledger.records.make_usage_record(**{k: v for k, v in fields.items() if k != "cost"})
    usage = {"input_tokens": 1_900, "output_tokens": 400, **{k: v for k, v in _cache_usage("x").items()
                                                                 if k.startswith("cache")}}
    assert litellm_cost(fields, kwargs) == _table_cost(
        "anthropic", {"model": "claude-opus-4-5", "usage": usage}, record)


# -- kinds no SDK above reports: image tokens, a per-request fee ----------------------------------
def test_image_tokens_and_per_request_fees_against_the_table():
    from genai_prices import Usage, calc_price

    from usageledger.pricing import price_record
    from usageledger.records import make_usage_record

    image = make_usage_record("openai", "gpt-image-1.5", 3_000, 8_000, input_image_tokens=2_000,
                              output_image_tokens=7_000, cache_read_tokens=1_000)
    want = calc_price(Usage(input_tokens=4_000, output_tokens=8_000, input_image_tokens=2_000,
                            output_image_tokens=7_000, cache_read_tokens=1_000, cache_image_read_tokens=0),
                      "gpt-image-1.5", provider_id="openai", genai_request_timestamp=image.timestamp)
    assert price_record(image).cost == want.total_price
    assert calculate_cost("gpt-image-1.5", 3_000, 8_000, provider="openai", cache_read_tokens=1_000) != want.total_price

    sonar = make_usage_record("perplexity", "sonar", 1_000, 200)
    want = calc_price(Usage(input_tokens=1_000, output_tokens=200), "sonar", provider_id="perplexity",
                      genai_request_timestamp=sonar.timestamp)
    assert price_record(sonar).cost == want.total_price
    # the fee alone: what the table charges a call of no tokens, once per call
    fee = calc_price(Usage(), "sonar", provider_id="perplexity", genai_request_timestamp=sonar.timestamp)
    assert fee.total_price > 0
    assert calculate_cost("sonar", 0, 0, provider="perplexity", at=sonar.timestamp) == fee.total_price


def test_the_tier_context_maps_to_the_table_variants():
    assert price_context(None) is None
    assert price_context("batch") == {"service_tier": "batch", "processing": "batch"}
    assert price_context("Priority") == {"service_tier": "priority"}
    assert price_context("fast") == {"service_tier": "fast", "speed": "fast"}
