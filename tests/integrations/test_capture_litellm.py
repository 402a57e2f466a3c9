"""usageledger.instrument with the real ``litellm`` package against the fake provider
server: LiteLLM calls OpenAI through the ``openai`` SDK (which we also patch) and Anthropic
with its own HTTP client; every call must be recorded once."""

from __future__ import annotations

import asyncio
import time

import litellm
import pytest

import usageledger
from tests.integrations.helpers import MESSAGES, tokens
from tests.support.fake_llm_server import EXPECTED
from usageledger.integrations.litellm import litellm_callback

litellm.telemetry = False


def wait_for(meter, n: int, timeout: float = 60.0) -> list:
    """LiteLLM runs sync success callbacks on its own threads: wait for ``n`` records,
    then a little more to see that no extra one comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = meter.query()
        if len(records) >= n:
            time.sleep(0.5)
            return meter.query()
        time.sleep(0.05)
    return meter.query()


def openai_args(server, **kw):
    return {"model": "openai/gpt-4o", "messages": MESSAGES, "api_base": server.openai_url,
            "api_key": "k", **kw}


def test_openai_through_litellm_is_recorded_once_with_its_attributes(llm_server, instrumented):
    with usageledger.attributes(user_id="u1", tags={"via": "litellm"}):
        response = litellm.completion(**openai_args(llm_server))
    assert response.choices[0].message.content == "Hello world"
    [record] = wait_for(instrumented, 1)
    assert (record.provider, record.model) == ("openai", "gpt-4o")
    assert tokens(record) == EXPECTED["chat"]
    assert (record.user_id, record.tags) == ("u1", {"via": "litellm"})
    assert record.payload["operation"] == "chat" and record.payload["latency_ms"] > 0
    assert record.cost is not None


def test_a_litellm_stream_is_recorded_once_with_the_callers_attributes(llm_server,
                                                                       instrumented):
    with usageledger.attributes(customer_key="acme"):
        stream = litellm.completion(**openai_args(
            llm_server, stream=True, stream_options={"include_usage": True}))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream
                       if chunk.choices)
    assert text == "Hello world"
    [record] = wait_for(instrumented, 1)
    assert tokens(record) == EXPECTED["chat"]
    assert record.customer_key == "acme"  # carried although LiteLLM logs on its own thread


def test_async_completion_and_embedding_through_litellm(llm_server, instrumented):
    async def calls():
        with usageledger.attributes(session_id="s9"):
            await litellm.acompletion(**openai_args(llm_server))
            await litellm.aembedding(model="openai/text-embedding-3-small", input=["hi"],
                                     api_base=llm_server.openai_url, api_key="k")
            await asyncio.sleep(0.5)  # LiteLLM logs in tasks of this loop

    asyncio.run(calls())
    records = sorted(wait_for(instrumented, 2), key=lambda r: r.payload["operation"])
    assert [(r.payload["operation"], tokens(r), r.session_id) for r in records] == [
        ("chat", EXPECTED["chat"], "s9"), ("embeddings", EXPECTED["embeddings"], "s9")]


def test_anthropic_through_litellm_keeps_cache_tokens(llm_server, instrumented):
    litellm.completion(model="anthropic/claude-sonnet-4", messages=MESSAGES, max_tokens=32,
                       api_base=llm_server.url, api_key="k")
    [record] = wait_for(instrumented, 1)
    assert (record.provider, record.model) == ("anthropic", "claude-sonnet-4")
    assert tokens(record) == EXPECTED["anthropic"]


def test_sdk_calls_made_by_litellm_are_left_to_its_callback(llm_server, meter):
    """This LiteLLM posts through the client's low-level ``post``; older ones called
    ``chat.completions.create``. Such a call must be recorded once, by the callback: the
    SDK wrapper passes through when LiteLLM is its caller and the callback is active."""
    from openai import OpenAI

    client = OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    code = compile("client.chat.completions.create(model='gpt-4o', messages=MESSAGES)",
                   "litellm_caller", "exec")
    as_litellm = {"__name__": "litellm.llms.openai.openai", "client": client,
                  "MESSAGES": MESSAGES}
    handle = usageledger.instrument(meter)
    try:
        exec(code, as_litellm)
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # the app's own
        assert len(meter.query()) == 1
    finally:
        handle.uninstrument()
    # without the LiteLLM callback, the SDK wrapper is the only one that can record it
    handle = usageledger.instrument(meter, providers=["openai"])
    try:
        exec(code, as_litellm)
        assert len(meter.query()) == 2
    finally:
        handle.uninstrument()


def test_uninstrument_removes_the_callback(llm_server, meter):
    handle = usageledger.instrument(meter, providers=["litellm"])
    ours = [cb for cb in litellm.callbacks if type(cb).__name__ == "UsageLedgerCallback"]
    assert len(ours) == 1
    handle.uninstrument()
    for name in ("callbacks", "success_callback", "_async_success_callback"):
        assert not [cb for cb in getattr(litellm, name)
                    if type(cb).__name__ == "UsageLedgerCallback"]
    litellm.completion(**openai_args(llm_server))
    assert wait_for(meter, 1, timeout=2) == []


def test_the_moved_callback_records_with_any_target(llm_server, meter):
    callback = litellm_callback(meter)
    litellm.logging_callback_manager.add_litellm_callback(callback)
    try:
        litellm.completion(**openai_args(llm_server))
        [record] = wait_for(meter, 1)
        assert tokens(record) == EXPECTED["chat"]
    finally:
        litellm.logging_callback_manager.remove_callback_from_all_lists(callback)


def _call_through(callback, server, n: int = 1) -> None:
    litellm.logging_callback_manager.add_litellm_callback(callback)
    try:
        for _ in range(n):
            litellm.completion(**openai_args(server))
        time.sleep(1.0)  # LiteLLM runs sync success callbacks on its own threads
    finally:
        litellm.logging_callback_manager.remove_callback_from_all_lists(callback)


def test_the_callback_records_with_a_usage_tracker(llm_server, tmp_path):
    from usageledger import UsageTracker

    tracker = UsageTracker(tmp_path / "usage.json", backup_dir=tmp_path / "b",
                           emergency_dir=tmp_path / "e", flush_interval=0.05)
    try:
        _call_through(litellm_callback(tracker), llm_server)
        _call_through(tracker.litellm_callback(), llm_server)  # the tracker's own method
        assert tracker.flush(30)
        gpt = tracker.get_today()["by_model"]["openai/gpt-4o"]
        chat = EXPECTED["chat"]
        assert (gpt["calls"], gpt["input_tokens"], gpt["output_tokens"]) == (
            2, 2 * chat["input_tokens"], 2 * chat["output_tokens"])
        assert gpt["cost"] > 0 and tracker.store.today().count == 2
    finally:
        tracker.shutdown(10)


def test_the_callback_records_with_persistent_delivery_typed(llm_server, tmp_path):
    from tests.support.fault_server import FaultServer
    from usageledger.delivery import PersistentDelivery

    with FaultServer() as collector:
        delivery = PersistentDelivery(api_base=collector.url, db_path=tmp_path / "queue.db")
        try:
            with usageledger.attributes(user_id="u7"):
                _call_through(litellm_callback(delivery), llm_server)
            assert delivery.flush(30)
        finally:
            delivery.stop(10)
        [stored] = collector.stored.values()
    assert (stored["provider"], stored["model"], stored["user_id"]) == ("openai", "gpt-4o", "u7")
    assert {k: stored.get(k, 0) for k in EXPECTED["chat"]} == EXPECTED["chat"]
    assert "api_id" not in stored  # typed, not the older /track shape


def test_the_callback_records_with_any_object_with_a_record_method(llm_server):
    class Notebook:
        # $1 per uncached input token, nothing else
        prices = {"openai/gpt-4o": {"input": 1_000_000, "output": 0, "cache_read": 0, "cache_write": 0}}

        def __init__(self):
            self.calls = []

        def record(self, **fields):
            self.calls.append(fields)

    book = Notebook()
    _call_through(litellm_callback(book), llm_server)
    [fields] = book.calls
    assert (fields["provider"], fields["model"]) == ("openai", "gpt-4o")
    assert fields["cost"] == fields["input_tokens"]  # priced with the target's own prices


def test_one_hook_class_serves_the_tracker_and_any_target():
    from usageledger.integrations.litellm import LiteLLMHooks
    from usageledger.tracker import UsageTracker

    assert issubclass(UsageTracker, LiteLLMHooks)
    for name in ("log_pre_api_call", "log_success_event", "async_log_success_event",
                 "log_failure_event", "litellm_callback"):
        assert getattr(UsageTracker, name) is getattr(LiteLLMHooks, name), name
    assert not any(name.startswith(("log_", "async_log_")) for name in vars(UsageTracker))


def test_old_import_path_of_the_litellm_helpers_still_works():
    from usageledger.integrations.litellm import usage_from_litellm
    from usageledger.tracker import _from_litellm

    assert _from_litellm is usage_from_litellm


@pytest.fixture(autouse=True)
def _no_leftover_callbacks():
    yield
    for cb in list(litellm.callbacks):
        if type(cb).__name__ == "UsageLedgerCallback":
            litellm.logging_callback_manager.remove_callback_from_all_lists(cb)
