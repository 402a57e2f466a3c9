"""usageledger.instrument with the real ``openai`` SDK against the fake provider server."""

from __future__ import annotations

import asyncio
import logging

import openai
import pytest
from openai import AsyncOpenAI, AzureOpenAI, OpenAI
from openai.resources.chat.completions.completions import AsyncCompletions, Completions
from openai.resources.embeddings import AsyncEmbeddings, Embeddings
from openai.resources.responses.responses import AsyncResponses, Responses

import usageledger
from tests.integrations.helpers import MESSAGES, dump, tokens
from tests.support.fake_llm_server import EXPECTED, FAIL_MODEL, response_model
from usageledger.integrations.capture import capture_errors


def _client(server) -> OpenAI:
    return OpenAI(base_url=server.openai_url, api_key="k", max_retries=0)


def _async_client(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.openai_url, api_key="k", max_retries=0)


def _run(make):
    """Run an async form on a fresh loop with a fresh client (a client's pool is bound
    to the loop it was first used on)."""
    return lambda server: asyncio.run(make(server))


# -- every call form: what the user sees (ids blanked), and the API whose usage it has ----------
def chat(server):
    return [dump(_client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES))]


def chat_raw(server):
    raw = _client(server).chat.completions.with_raw_response.create(model="gpt-4o",
                                                                    messages=MESSAGES)
    return [raw.headers.get("x-request-id"), dump(raw.parse())]


def chat_parse(server):
    return [dump(_client(server).chat.completions.parse(model="gpt-4o", messages=MESSAGES))]


def chat_stream(server):
    stream = _client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                     stream=True)
    return [dump(chunk) for chunk in stream]


def chat_stream_user_usage(server):
    stream = _client(server).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    return [dump(chunk) for chunk in stream]


def chat_stream_next_and_with(server):
    with _client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                 stream=True) as stream:
        out = [dump(next(stream))]
        out += [dump(chunk) for chunk in stream]
    return out


def chat_raw_stream(server):
    raw = _client(server).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True)
    return [dump(chunk) for chunk in raw.parse()]


def chat_stream_helper(server):
    with _client(server).chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        out = [dump(event) for event in stream]
        out.append(dump(stream.get_final_completion()))
    return out


def responses(server):
    return [dump(_client(server).responses.create(model="o3-mini", input="hi"))]


def responses_raw(server):
    raw = _client(server).responses.with_raw_response.create(model="o3-mini", input="hi")
    return [dump(raw.parse())]


def responses_stream(server):
    return [dump(e) for e in _client(server).responses.create(model="o3-mini", input="hi",
                                                              stream=True)]


def responses_stream_helper(server):
    with _client(server).responses.stream(model="o3-mini", input="hi") as stream:
        out = [dump(event) for event in stream]
        out.append(dump(stream.get_final_response()))
    return out


def embeddings(server):
    return [dump(_client(server).embeddings.create(model="text-embedding-3-small",
                                                   input="hi"))]


def embeddings_float(server):
    return [dump(_client(server).embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"))]


async def _async_chat(server):
    return [dump(await _async_client(server).chat.completions.create(model="gpt-4o",
                                                                     messages=MESSAGES))]


async def _async_chat_raw(server):
    raw = await _async_client(server).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES)
    return [dump(raw.parse())]


async def _async_chat_stream(server):
    stream = await _async_client(server).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True)
    return [dump(chunk) async for chunk in stream]


async def _async_chat_stream_helper(server):
    async with _async_client(server).chat.completions.stream(
            model="gpt-4o", messages=MESSAGES) as stream:
        out = [dump(event) async for event in stream]
        out.append(dump(await stream.get_final_completion()))
    return out


async def _async_responses_stream(server):
    stream = await _async_client(server).responses.create(model="o3-mini", input="hi",
                                                          stream=True)
    return [dump(e) async for e in stream]


async def _async_embeddings(server):
    return [dump(await _async_client(server).embeddings.create(
        model="text-embedding-3-small", input="hi"))]


FORMS = {
    "chat": (chat, "chat", False),
    "chat_raw": (chat_raw, "chat", False),
    "chat_parse": (chat_parse, "chat", False),
    "chat_stream": (chat_stream, "chat", True),
    "chat_stream_user_usage": (chat_stream_user_usage, "chat", True),
    "chat_stream_next_and_with": (chat_stream_next_and_with, "chat", True),
    "chat_raw_stream": (chat_raw_stream, "chat", True),
    "chat_stream_helper": (chat_stream_helper, "chat", True),
    "responses": (responses, "responses", False),
    "responses_raw": (responses_raw, "responses", False),
    "responses_stream": (responses_stream, "responses", True),
    "responses_stream_helper": (responses_stream_helper, "responses", True),
    "embeddings": (embeddings, "embeddings", False),
    "embeddings_float": (embeddings_float, "embeddings", False),
    "async_chat": (_run(_async_chat), "chat", False),
    "async_chat_raw": (_run(_async_chat_raw), "chat", False),
    "async_chat_stream": (_run(_async_chat_stream), "chat", True),
    "async_chat_stream_helper": (_run(_async_chat_stream_helper), "chat", True),
    "async_responses_stream": (_run(_async_responses_stream), "responses", True),
    "async_embeddings": (_run(_async_embeddings), "embeddings", False),
}
REQUESTED = {"chat": "gpt-4o", "responses": "o3-mini", "embeddings": "text-embedding-3-small"}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_call_form_is_recorded_once_with_exact_tokens(form, llm_server, instrumented):
    call, api, streamed = FORMS[form]
    errors = capture_errors()
    with usageledger.attributes(user_id="u1", customer_key="acme", session_id="s9",
                                tags={"feature": form}):
        call(llm_server)
    [record] = instrumented.query()
    assert tokens(record) == EXPECTED[api]
    assert (record.provider, record.model) == ("openai", response_model(REQUESTED[api]))
    assert (record.user_id, record.customer_key, record.session_id, record.tags) == (
        "u1", "acme", "s9", {"feature": form})
    if api != "embeddings":  # an embeddings response has no id
        assert record.response_id and record.response_id.startswith(
            "chatcmpl-" if api == "chat" else "resp_")
    assert record.payload["operation"] == ("embeddings" if api == "embeddings" else "chat")
    assert record.payload["latency_ms"] > 0
    assert record.payload.get("stream", False) is streamed
    assert capture_errors() == errors  # nothing of ours failed on the way


@pytest.mark.parametrize("form", sorted(FORMS))
def test_user_sees_exactly_what_the_sdk_gives_without_us(form, llm_server, meter):
    call = FORMS[form][0]
    plain = call(llm_server)
    handle = usageledger.instrument(meter)
    try:
        captured = call(llm_server)
    finally:
        handle.uninstrument()
    assert captured == plain
    if form.startswith(("chat_stream", "async_chat_stream")) and form != "chat_stream_user_usage":
        # the usage-only chunk we asked for (choices=[]) never reaches the user
        assert all('"choices":[]' not in item for item in captured)


def test_usage_is_asked_for_and_its_chunk_removed_unless_the_user_asked(llm_server,
                                                                        instrumented):
    llm_server.clear()
    chunks = chat_stream(llm_server)
    assert llm_server.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(c.count('"usage":null') or '"usage"' not in c for c in chunks)
    # with the user's own stream_options, theirs are kept and completed
    client = _client(llm_server)
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                            stream_options={"include_obfuscation": False})
    assert all(chunk.choices for chunk in stream)  # code indexing choices[0] never breaks
    assert llm_server.requests[-1].body["stream_options"] == {
        "include_obfuscation": False, "include_usage": True}
    # the user asked for usage: they get the usage chunk, and it is recorded once
    user = chat_stream_user_usage(llm_server)
    assert '"choices":[]' in user[-1]
    assert len(instrumented.query()) == 3


def test_stream_usage_false_leaves_the_request_alone(llm_server, meter):
    handle = usageledger.instrument(meter, stream_usage=False)
    try:
        llm_server.clear()
        chat_stream(llm_server)
        assert "stream_options" not in llm_server.requests[-1].body
        assert meter.query() == []  # no usage in the stream: nothing to record
        chat_stream_user_usage(llm_server)
        assert len(meter.query()) == 1
    finally:
        handle.uninstrument()


def test_a_server_error_raises_the_sdk_error_and_records_nothing(llm_server, instrumented):
    client = _client(llm_server)
    errors = capture_errors()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=FAIL_MODEL, messages=MESSAGES)
    assert info.value.status_code == 500
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=FAIL_MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model=FAIL_MODEL, input="x")

    async def failing():
        with pytest.raises(openai.InternalServerError):
            await _async_client(llm_server).responses.create(model=FAIL_MODEL, input="x")

    asyncio.run(failing())
    assert instrumented.query() == []
    assert capture_errors() == errors


def test_an_abandoned_stream_records_what_it_saw_once(llm_server, instrumented):
    # Responses: the usage is in the last event; a user who read it and then broke out
    # (no [DONE] read, stream not closed) still gets exactly one record
    client = _client(llm_server)
    stream = client.responses.create(model="o3-mini", input="hi", stream=True)
    for event in stream:
        if event.type == "response.completed":
            break
    stream.close()
    stream.close()
    del stream
    # Chat Completions: the usage chunk comes last; breaking out before it means no usage
    # was seen, so nothing is recorded (and nothing raises)
    with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as s:
        next(s)
    records = instrumented.query()
    assert [tokens(r) for r in records] == [EXPECTED["responses"]]


def test_azure_client_records_provider_azure_and_the_deployment(llm_server, instrumented):
    client = AzureOpenAI(azure_endpoint=llm_server.url, api_key="k", api_version="2024-10-21",
                         azure_deployment="prod-4o", max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert llm_server.requests[-1].path == "/openai/deployments/prod-4o/chat/completions"
    # no azure_deployment on the client: the model argument names the deployment
    plain = AzureOpenAI(azure_endpoint=llm_server.url, api_key="k", api_version="2024-10-21",
                        max_retries=0)
    for chunk in plain.chat.completions.create(model="eu-4o", messages=MESSAGES, stream=True):
        assert chunk.choices
    records = sorted(instrumented.query(), key=lambda r: r.id)
    assert [(r.provider, r.model, r.tags) for r in records] == [
        ("azure", response_model("gpt-4o"), {"deployment": "prod-4o"}),
        ("azure", response_model("eu-4o"), {"deployment": "eu-4o"}),
    ]
    assert [tokens(r) for r in records] == [EXPECTED["chat"]] * 2


PATCHED = [(Completions, "create"), (AsyncCompletions, "create"), (Completions, "parse"),
           (AsyncCompletions, "parse"), (Responses, "create"), (AsyncResponses, "create"),
           (Responses, "parse"), (AsyncResponses, "parse"), (Embeddings, "create"),
           (AsyncEmbeddings, "create")]


def test_uninstrument_restores_the_original_functions(meter):
    originals = [vars(owner)[name] for owner, name in PATCHED]
    handle = usageledger.instrument(meter, providers=["openai"])
    assert all(vars(owner)[name] is not original
               for (owner, name), original in zip(PATCHED, originals, strict=True))
    again = usageledger.instrument(meter, providers=["openai"])
    assert again is handle  # the same call twice: one handle, patched once
    assert all(vars(owner)[name].__usageledger_original__ is original
               for (owner, name), original in zip(PATCHED, originals, strict=True))
    handle.uninstrument()
    assert all(vars(owner)[name] is original
               for (owner, name), original in zip(PATCHED, originals, strict=True))
    usageledger.instrument(meter, providers=["openai"])
    usageledger.uninstrument()  # the module-level form restores too
    assert all(vars(owner)[name] is original
               for (owner, name), original in zip(PATCHED, originals, strict=True))


def test_two_targets_each_get_every_call_and_instrumenting_twice_counts_once(llm_server):
    from usageledger.meter import Meter

    with Meter() as a, Meter() as b:
        usageledger.instrument(a)
        usageledger.instrument(a)
        hb = usageledger.instrument(b)
        chat(llm_server)
        hb.uninstrument()
        chat(llm_server)
        assert (len(a.query()), len(b.query())) == (2, 1)
        usageledger.uninstrument()
        chat(llm_server)
        assert (len(a.query()), len(b.query())) == (2, 1)


def test_a_failing_target_never_breaks_the_call(llm_server, caplog):
    class Broken:
        def record(self, **fields):
            raise OSError("disk on fire")

    handle = usageledger.instrument(Broken())
    try:
        before = capture_errors().get("recording into Broken: OSError", 0)
        with caplog.at_level(logging.WARNING, logger="usageledger.capture"):
            first = chat(llm_server)
            assert len(chat_stream(llm_server)) == 6
            assert chat(llm_server) == first
        assert capture_errors()["recording into Broken: OSError"] == before + 3
        # logged once per kind, counted every time
        assert sum("disk on fire" in r.getMessage() for r in caplog.records) == (
            1 if before == 0 else 0)
    finally:
        handle.uninstrument()


def test_an_extraction_failure_never_breaks_the_call(llm_server, instrumented, monkeypatch):
    from usageledger.integrations import _capture_openai

    def broken(response):
        raise RuntimeError("cannot read this response")

    monkeypatch.setattr(_capture_openai, "usage_from_openai", broken)
    before = capture_errors().get("openai chat response: RuntimeError", 0)
    result = _client(llm_server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert result.choices[0].message.content == "Hello world"
    chunks = chat_stream(llm_server)
    assert len(chunks) == 6 and all('"choices":[]' not in c for c in chunks)
    assert capture_errors()["openai chat response: RuntimeError"] == before + 1
    assert capture_errors()["openai chat stream: RuntimeError"] >= 1
    assert instrumented.query() == []


class Refuse:
    """A guard of our own: refuses any call attributed to customer "over-budget"."""

    def __init__(self):
        self.seen = []

    def require(self, **attributes):
        self.seen.append(attributes)
        if attributes["customer_key"] == "over-budget":
            raise PermissionError(f"budget exhausted for {attributes['customer_key']}")


def test_a_guard_refusal_propagates_and_no_request_is_sent(llm_server, meter):
    guard = Refuse()
    handle = usageledger.instrument(meter, guard=guard)
    try:
        client = _client(llm_server)
        sent = llm_server.count()
        with usageledger.attributes(customer_key="over-budget", tags={"t": "1"}):
            with pytest.raises(PermissionError, match="over-budget"):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            with pytest.raises(PermissionError):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
            with pytest.raises(PermissionError):
                client.responses.with_raw_response.create(model="o3-mini", input="hi")

            async def refused():
                with pytest.raises(PermissionError):
                    await _async_client(llm_server).embeddings.create(model="m", input="x")

            asyncio.run(refused())
        assert llm_server.count() == sent  # the provider saw nothing
        assert meter.query() == []
        assert guard.seen[0] == {"user_id": None, "customer_key": "over-budget",
                                 "session_id": None, "tags": {"t": "1"}}
        with usageledger.attributes(customer_key="fine", user_id="u"):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert guard.seen[-1]["customer_key"] == "fine" and len(meter.query()) == 1
    finally:
        handle.uninstrument()


def test_instrument_refuses_bad_arguments_naming_them(meter):
    with pytest.raises(ValueError, match=r"unknown providers \['cohere'\]"):
        usageledger.instrument(meter, providers=["openai", "cohere"])
    with pytest.raises(TypeError, match="guard=.*require"):
        usageledger.instrument(meter, guard=object())
    with pytest.raises(TypeError, match=r"UsageTracker or PersistentDelivery \(any object .*\), got int"):
        usageledger.instrument(42)
    handle = usageledger.instrument(meter)
    with pytest.raises(ValueError, match="already instrumented"):
        usageledger.instrument(meter, stream_usage=False)
    handle.uninstrument()


def test_with_streaming_response_passes_through_unrecorded(llm_server, instrumented):
    # the body is the caller's to read: we neither read it nor change the request
    client = _client(llm_server)
    errors = capture_errors()
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MESSAGES, stream=True) as response:
        lines = [line for line in response.iter_lines() if line]
    assert "stream_options" not in llm_server.requests[-1].body
    assert lines[-1] == "data: [DONE]"
    assert instrumented.query() == [] and capture_errors() == errors
