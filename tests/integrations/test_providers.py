"""OpenAI and Anthropic usage extraction from real SDK objects, and recording it."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseCompletedEvent

from usageledger.delivery import PersistentDelivery
from usageledger.integrations.anthropic import record_anthropic, usage_from_anthropic
from usageledger.integrations.openai import record_openai, usage_from_openai
from usageledger.meter import Meter
from usageledger.pricing import calculate_cost
from usageledger.server.wire import record_from_dict
from usageledger.sinks.base import OK, Sink
from usageledger.tracker import UsageTracker


def chat_completion(usage: dict | None, model: str = "gpt-4o") -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-1", object="chat.completion", created=1_700_000_000, model=model,
        choices=[{"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": "hi"}}],
        usage=usage,
    )


CHAT_USAGE = {
    "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
    "prompt_tokens_details": {"cached_tokens": 400},
    "completion_tokens_details": {"reasoning_tokens": 120},
}


def responses_response(usage: dict | None) -> Response:
    return Response(
        id="resp_1", object="response", created_at=1_700_000_000, model="o3-mini",
        output=[], parallel_tool_calls=True, tool_choice="auto", tools=[], usage=usage,
    )


def anthropic_message(usage: dict, model: str = "claude-sonnet-4-20250514") -> Message:
    return Message(
        id="msg_1", type="message", role="assistant", model=model,
        content=[{"type": "text", "text": "hi"}], stop_reason="end_turn", usage=usage,
    )


ANTHROPIC_USAGE = {
    "input_tokens": 50, "output_tokens": 200, "cache_read_input_tokens": 3000,
    "cache_creation_input_tokens": 700,
}


def test_chat_completion_usage_excludes_cached_tokens_from_input():
    assert usage_from_openai(chat_completion(CHAT_USAGE)) == {
        "provider": "openai", "model": "gpt-4o", "input_tokens": 600, "output_tokens": 300,
        "cache_read_tokens": 400, "cache_write_tokens": 0, "reasoning_tokens": 120,
        "response_id": "chatcmpl-1",
    }


def test_chat_completion_as_dict_gives_the_same_fields():
    response = chat_completion(CHAT_USAGE)
    assert usage_from_openai(response.model_dump()) == usage_from_openai(response)
    assert usage_from_openai(msgspec.json.decode(response.model_dump_json())) == (
        usage_from_openai(response))


def test_chat_completion_without_details_has_no_cache_tokens():
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    fields = usage_from_openai(chat_completion(usage))
    assert (fields["input_tokens"], fields["output_tokens"]) == (10, 5)
    assert fields["cache_read_tokens"] == fields["reasoning_tokens"] == 0


def test_last_stream_chunk_with_usage():
    chunks = [
        ChatCompletionChunk(id="chatcmpl-2", object="chat.completion.chunk", created=1,
                            model="gpt-4o-mini", choices=[{"index": 0, "delta": {"content": "hi"}}]),
        ChatCompletionChunk(id="chatcmpl-2", object="chat.completion.chunk", created=1,
                            model="gpt-4o-mini", choices=[],
                            usage={"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27,
                                   "prompt_tokens_details": {"cached_tokens": 16}}),
    ]
    with pytest.raises(ValueError, match="include_usage"):
        usage_from_openai(chunks[0])
    fields = usage_from_openai(chunks[-1])
    assert (fields["model"], fields["input_tokens"], fields["cache_read_tokens"],
            fields["output_tokens"]) == ("gpt-4o-mini", 4, 16, 7)


def test_openai_cache_writes_are_taken_out_of_input_too():
    usage = {**CHAT_USAGE, "prompt_tokens_details": {"cached_tokens": 400,
                                                     "cache_write_tokens": 100}}
    fields = usage_from_openai(chat_completion(usage))
    assert (fields["input_tokens"], fields["cache_read_tokens"],
            fields["cache_write_tokens"]) == (500, 400, 100)


def test_responses_api_usage():
    usage = {"input_tokens": 2000, "output_tokens": 900, "total_tokens": 2900,
             "input_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 640}}
    response = responses_response(usage)
    expected = {
        "provider": "openai", "model": "o3-mini", "input_tokens": 500, "output_tokens": 900,
        "cache_read_tokens": 1500, "cache_write_tokens": 0, "reasoning_tokens": 640,
        "response_id": "resp_1",
    }
    assert usage_from_openai(response) == expected
    assert usage_from_openai(response.model_dump()) == expected
    # the response.completed stream event carries the final response
    event = ResponseCompletedEvent(type="response.completed", response=response,
                                   sequence_number=7)
    assert usage_from_openai(event) == expected


@pytest.mark.parametrize("response", [chat_completion(None), responses_response(None)])
def test_openai_response_without_usage_is_a_clear_error(response):
    with pytest.raises(ValueError, match="has no usage"):
        usage_from_openai(response)


def test_openai_inconsistent_or_bad_counts_are_refused():
    bad = {**CHAT_USAGE, "prompt_tokens": 100}
    with pytest.raises(ValueError, match="prompt_tokens=100 must include the cached tokens"):
        usage_from_openai(chat_completion(bad))
    with pytest.raises(TypeError, match="usage.completion_tokens must be a non-negative integer"):
        usage_from_openai({"model": "gpt-4o", "usage": {"prompt_tokens": 1,
                                                        "completion_tokens": "2"}})
    with pytest.raises(ValueError, match="neither prompt_tokens nor input_tokens"):
        usage_from_openai({"model": "gpt-4o", "usage": {"total_tokens": 3}})
    with pytest.raises(ValueError, match="no model name"):
        usage_from_openai({"usage": {"prompt_tokens": 1, "completion_tokens": 2}})


def test_anthropic_usage_takes_input_as_is():
    assert usage_from_anthropic(anthropic_message(ANTHROPIC_USAGE)) == {
        "provider": "anthropic", "model": "claude-sonnet-4-20250514", "input_tokens": 50,
        "output_tokens": 200, "cache_read_tokens": 3000, "cache_write_tokens": 700,
        "reasoning_tokens": 0, "response_id": "msg_1",
    }


def test_anthropic_thinking_tokens_and_missing_cache_fields():
    message = anthropic_message({"input_tokens": 12, "output_tokens": 80,
                                 "output_tokens_details": {"thinking_tokens": 60}})
    fields = usage_from_anthropic(message)
    assert (fields["input_tokens"], fields["output_tokens"], fields["reasoning_tokens"],
            fields["cache_read_tokens"], fields["cache_write_tokens"]) == (12, 80, 60, 0, 0)
    assert usage_from_anthropic(message.model_dump()) == fields


def test_anthropic_response_without_usage_is_a_clear_error():
    with pytest.raises(ValueError, match="Anthropic response 'msg_9' has no usage"):
        usage_from_anthropic({"id": "msg_9", "model": "claude-3-haiku-20240307"})


def test_record_openai_into_a_meter_totals_and_prices():
    response = chat_completion(CHAT_USAGE)
    with Meter("memory") as meter:
        first = record_openai(meter, response, user_id="u1", tags={"feature": "chat"})
        record_openai(meter, response, user_id="u2")
        rows = meter.summary(group_by="model")
        stored = {r.id: r for r in meter.query()}
    assert len(rows) == 1
    row = rows[0]
    assert (row["count"], row["input_tokens"], row["cache_read_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (2, 1200, 800, 600, 240)
    one = calculate_cost("gpt-4o", 600, 300, provider="openai", cache_read_tokens=400)
    assert one is not None and one > 0
    assert row["cost"] == 2 * one
    assert stored[first].user_id == "u1" and stored[first].tags == {"feature": "chat"}
    assert stored[first].response_id == "chatcmpl-1"


def test_record_anthropic_and_openai_into_a_tracker(tmp_path):
    tracker = UsageTracker(tmp_path / "summary.json", durability="memory", flush_interval=0.05)
    try:
        record_anthropic(tracker, anthropic_message(ANTHROPIC_USAGE))
        record_openai(tracker, chat_completion(CHAT_USAGE))
        assert tracker.flush(10)
        totals = tracker.get_summary()
    finally:
        tracker.shutdown(10)
    text = (tmp_path / "summary.json").read_text()
    assert "claude-sonnet-4-20250514" in text and "gpt-4o" in text
    assert totals["unflushed"] == 0 and totals["calls"] == 2
    assert set(totals["by_model"]) == {"anthropic/claude-sonnet-4-20250514", "openai/gpt-4o"}
    flat = totals
    assert flat["input_tokens"] == 650
    assert flat["cache_read_tokens"] == 3400
    assert flat["cache_write_tokens"] == 700
    assert flat["output_tokens"] == 500
    expected = (calculate_cost("gpt-4o", 600, 300, provider="openai", cache_read_tokens=400)
                + calculate_cost("claude-sonnet-4-20250514", 50, 200, provider="anthropic",
                                 cache_read_tokens=3000, cache_write_tokens=700))
    assert flat["cost"] == expected


class CaptureSink(Sink):
    """Keeps the JSON items the delivery pipeline hands it."""

    def __init__(self):
        self.items: dict[str, bytes] = {}

    def send(self, batch):
        for item in batch:
            self.items[item.id] = item.data
        return {item.id: OK for item in batch}


def test_record_openai_into_persistent_delivery_reads_back_as_the_same_record(tmp_path):
    sink = CaptureSink()
    delivery = PersistentDelivery(db_path=tmp_path / "queue.db", sink=sink)
    try:
        id_ = record_openai(delivery, chat_completion(CHAT_USAGE), customer_key="c1",
                            cost="0.25")
        assert delivery.flush(10)
    finally:
        delivery.stop(10)
    item = msgspec.json.decode(sink.items[id_])
    # the typed record shape, not the older api_id/service_key/payload aliases
    assert item["provider"] == "openai" and item["model"] == "gpt-4o"
    assert "api_id" not in item and "service_key" not in item and item["input_tokens"] == 600
    rec = record_from_dict(item)  # what the collector makes of it
    assert (rec.id, rec.provider, rec.model, rec.input_tokens, rec.output_tokens,
            rec.cache_read_tokens, rec.reasoning_tokens) == (
        id_, "openai", "gpt-4o", 600, 300, 400, 120)
    assert (rec.customer_key, rec.response_id, rec.cost) == ("c1", "chatcmpl-1",
                                                            Decimal("0.25"))


def test_record_anthropic_into_persistent_delivery_keeps_cache_writes(tmp_path):
    sink = CaptureSink()
    delivery = PersistentDelivery(db_path=tmp_path / "queue.db", sink=sink)
    try:
        id_ = record_anthropic(delivery, anthropic_message(ANTHROPIC_USAGE),
                               tags={"team": "search"})
        assert delivery.flush(10)
    finally:
        delivery.stop(10)
    rec = record_from_dict(msgspec.json.decode(sink.items[id_]))
    assert (rec.provider, rec.model, rec.input_tokens, rec.output_tokens, rec.cache_read_tokens,
            rec.cache_write_tokens, rec.response_id, rec.tags) == (
        "anthropic", "claude-sonnet-4-20250514", 50, 200, 3000, 700, "msg_1", {"team": "search"})


def test_record_into_an_unknown_target_names_the_type():
    with pytest.raises(TypeError, match=r"UsageTracker or PersistentDelivery \(any object .*\), got dict"):
        record_openai({}, chat_completion(CHAT_USAGE))
