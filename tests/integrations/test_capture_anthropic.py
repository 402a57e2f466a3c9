"""usageledger.instrument with the real ``anthropic`` SDK against the fake provider server."""

from __future__ import annotations

import asyncio
import gc

import anthropic
import pytest
from anthropic import Anthropic, AsyncAnthropic
from anthropic.resources.messages.messages import AsyncMessages, Messages

import usageledger
from tests.integrations.helpers import MESSAGES, dump, tokens
from tests.support.fake_llm_server import (
    EXPECTED,
    FAIL_MODEL,
    MIDSTREAM_FAIL_MODEL,
    response_model,
)
from usageledger.integrations.capture import capture_errors

MODEL = "claude-sonnet-4"
ARGS = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}


def _client(server) -> Anthropic:
    return Anthropic(base_url=server.url, api_key="k", max_retries=0)


def _async_client(server) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)


def _run(make):
    return lambda server: asyncio.run(make(server))


def create(server):
    return [dump(_client(server).messages.create(**ARGS))]


def create_raw(server):
    raw = _client(server).messages.with_raw_response.create(**ARGS)
    return [raw.headers.get("x-request-id"), dump(raw.parse())]


def create_stream(server):
    return [dump(e) for e in _client(server).messages.create(**ARGS, stream=True)]


def create_raw_stream(server):
    raw = _client(server).messages.with_raw_response.create(**ARGS, stream=True)
    return [dump(e) for e in raw.parse()]


def stream_events(server):
    with _client(server).messages.stream(**ARGS) as stream:
        out = [dump(e) for e in stream]
        out.append(dump(stream.get_final_message()))
    return out


def stream_text(server):
    with _client(server).messages.stream(**ARGS) as stream:
        out = list(stream.text_stream)
        out.append(stream.get_final_text())
    return out


def stream_final_only(server):
    with _client(server).messages.stream(**ARGS) as stream:
        return [dump(stream.get_final_message())]


async def _async_create(server):
    return [dump(await _async_client(server).messages.create(**ARGS))]


async def _async_create_raw(server):
    raw = await _async_client(server).messages.with_raw_response.create(**ARGS)
    return [dump(await raw.parse())]


async def _async_create_stream(server):
    stream = await _async_client(server).messages.create(**ARGS, stream=True)
    return [dump(e) async for e in stream]


async def _async_stream(server):
    async with _async_client(server).messages.stream(**ARGS) as stream:
        out = [t async for t in stream.text_stream]
        out.append(dump(await stream.get_final_message()))
    return out


FORMS = {
    "create": (create, False),
    "create_raw": (create_raw, False),
    "create_stream": (create_stream, True),
    "create_raw_stream": (create_raw_stream, True),
    "stream_events": (stream_events, True),
    "stream_text": (stream_text, True),
    "stream_final_only": (stream_final_only, True),
    "async_create": (_run(_async_create), False),
    "async_create_raw": (_run(_async_create_raw), False),
    "async_create_stream": (_run(_async_create_stream), True),
    "async_stream": (_run(_async_stream), True),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_call_form_is_recorded_once_with_exact_tokens(form, llm_server, instrumented):
    call, streamed = FORMS[form]
    errors = capture_errors()
    with usageledger.attributes(user_id="u2", tags={"feature": form}):
        call(llm_server)
    [record] = instrumented.query()
    assert tokens(record) == EXPECTED["anthropic"]
    assert (record.provider, record.model) == ("anthropic", response_model(MODEL))
    assert record.response_id.startswith("msg_")
    assert (record.user_id, record.tags) == ("u2", {"feature": form})
    assert record.payload["operation"] == "chat" and record.payload["latency_ms"] > 0
    assert record.payload.get("stream", False) is streamed
    assert capture_errors() == errors


@pytest.mark.parametrize("form", sorted(FORMS))
def test_user_sees_exactly_what_the_sdk_gives_without_us(form, llm_server, meter):
    call = FORMS[form][0]
    plain = call(llm_server)
    handle = usageledger.instrument(meter)
    try:
        assert call(llm_server) == plain
    finally:
        handle.uninstrument()


def test_stream_object_keeps_the_sdk_interface(llm_server, instrumented):
    client = _client(llm_server)
    manager = client.messages.stream(**ARGS)
    assert type(manager).__name__ == "MessageStreamManager"
    with manager as stream:
        assert type(stream).__name__ == "MessageStream"
        assert stream.request_id == "req_fake"
        assert stream.get_final_text() == "Hello world"
    raw_stream = client.messages.create(**ARGS, stream=True)
    assert isinstance(raw_stream, anthropic.Stream)
    with raw_stream:
        assert [e.type for e in raw_stream][0] == "message_start"
    assert len(instrumented.query()) == 2


def test_a_server_error_raises_the_sdk_error_and_records_nothing(llm_server, instrumented):
    client = _client(llm_server)
    errors = capture_errors()
    bad = {**ARGS, "model": FAIL_MODEL}
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**bad)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**bad, stream=True)
    with pytest.raises(anthropic.InternalServerError):
        with client.messages.stream(**bad) as stream:
            stream.get_final_message()

    async def failing():
        with pytest.raises(anthropic.InternalServerError):
            async with _async_client(llm_server).messages.stream(**bad) as stream:
                await stream.get_final_message()

    asyncio.run(failing())
    assert instrumented.query() == []
    assert capture_errors() == errors


def test_an_abandoned_stream_records_the_usage_seen_so_far_once(llm_server, instrumented):
    client = _client(llm_server)
    # broken out of after the first text delta, then closed by the with block
    with client.messages.stream(**ARGS) as stream:
        for text in stream.text_stream:
            assert text == "Hel"
            break
    stream.close()
    # dropped half-read without close(): recorded when the SDK's stream is collected
    raw = client.messages.create(**ARGS, stream=True)
    next(iter(raw))  # message_start
    del raw
    gc.collect()
    records = instrumented.query()
    # message_start reported the input side and 1 output token; message_delta (200) unseen
    seen_so_far = {**EXPECTED["anthropic"], "output_tokens": 1}
    assert [tokens(r) for r in records] == [seen_so_far, seen_so_far]


def test_a_stream_failing_partway_raises_the_sdk_error_and_records_what_it_saw(
        llm_server, instrumented):
    stream = _client(llm_server).messages.create(**{**ARGS, "model": MIDSTREAM_FAIL_MODEL},
                                                 stream=True)
    seen = []
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        for event in stream:
            seen.append(event.type)
    assert seen == ["message_start"]
    [record] = instrumented.query()  # the input side was billed: recorded once
    assert tokens(record) == {**EXPECTED["anthropic"], "output_tokens": 1}
    stream.close()
    assert len(instrumented.query()) == 1


def test_attributes_follow_threads_tasks_and_nest(llm_server, instrumented):
    import contextvars
    import threading

    client = _client(llm_server)
    with usageledger.attributes(user_id="outer", session_id="s1", tags={"a": "1", "b": "1"}):
        with usageledger.attributes(user_id="inner", tags={"b": "2"}):
            client.messages.create(**ARGS, metadata={"user_id": "nested"})
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(create, llm_server))
        thread.start()
        thread.join(60)

        async def tasks():
            async def one(customer):
                with usageledger.attributes(customer_key=customer):
                    await _async_client(llm_server).messages.create(**ARGS)

            await asyncio.gather(one("c1"), one("c2"))

        asyncio.run(tasks())
    create(llm_server)  # outside every block: no attributes
    got = sorted(((r.user_id, r.session_id, r.customer_key, tuple(sorted(r.tags.items())))
                  for r in instrumented.query()), key=str)
    assert got == sorted([
        ("inner", "s1", None, (("a", "1"), ("b", "2"))),
        ("outer", "s1", None, (("a", "1"), ("b", "1"))),
        ("outer", "s1", "c1", (("a", "1"), ("b", "1"))),
        ("outer", "s1", "c2", (("a", "1"), ("b", "1"))),
        (None, None, None, ()),
    ], key=str)


def test_attributes_refuse_bad_values_naming_the_field():
    with pytest.raises(TypeError, match=r"attributes\(user_id=...\) must be a non-empty string"):
        with usageledger.attributes(user_id=7):
            pass
    with pytest.raises(TypeError, match=r"tags\['k'\] must be a string"):
        with usageledger.attributes(tags={"k": 1}):
            pass


def test_uninstrument_restores_the_original_functions(meter):
    names = [(Messages, "create"), (AsyncMessages, "create"), (Messages, "stream"),
             (AsyncMessages, "stream"), (Messages, "parse"), (AsyncMessages, "parse")]
    originals = [vars(owner)[name] for owner, name in names]
    handle = usageledger.instrument(meter, providers=("anthropic",))
    assert all(vars(owner)[name].__usageledger_original__ is original
               for (owner, name), original in zip(names, originals, strict=True))
    handle.uninstrument()
    assert all(vars(owner)[name] is original
               for (owner, name), original in zip(names, originals, strict=True))


def test_a_guard_refusal_sends_no_request(llm_server, meter):
    class NoStreams:
        def require(self, **attributes):
            raise RuntimeError("refused by the guard")

    handle = usageledger.instrument(meter, providers=["anthropic"], guard=NoStreams())
    try:
        sent = llm_server.count()
        with pytest.raises(RuntimeError, match="refused by the guard"):
            _client(llm_server).messages.stream(**ARGS)
        with pytest.raises(RuntimeError, match="refused by the guard"):
            _client(llm_server).messages.create(**ARGS)
        assert llm_server.count() == sent
        assert meter.query() == []
    finally:
        handle.uninstrument()
