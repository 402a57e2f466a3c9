"""Fixtures for the capture tests: the fake provider server, real SDK clients pointed at
it, and a Meter that ``usageledger.instrument`` records into."""

from __future__ import annotations

import os

# LiteLLM fetches its price list over the network at import unless told not to
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest  # noqa: E402

from tests.support.fake_llm_server import FakeLLMServer  # noqa: E402
from usageledger.integrations.capture import uninstrument  # noqa: E402
from usageledger.meter import Meter  # noqa: E402


@pytest.fixture(scope="session")
def llm_server():
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def meter():
    m = Meter()
    yield m
    m.close(10)


@pytest.fixture
def instrumented(meter):
    import usageledger

    handle = usageledger.instrument(meter)
    yield meter
    handle.uninstrument()


@pytest.fixture(autouse=True)
def _nothing_left_instrumented():
    yield
    uninstrument()  # a failed test must not leave the SDKs patched for the next one


@pytest.fixture
def openai_client(llm_server):
    from openai import OpenAI

    client = OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def async_openai_client(llm_server):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)


@pytest.fixture
def anthropic_client(llm_server):
    from anthropic import Anthropic

    client = Anthropic(base_url=llm_server.url, api_key="k", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def async_anthropic_client(llm_server):
    from anthropic import AsyncAnthropic

    return AsyncAnthropic(base_url=llm_server.url, api_key="k", max_retries=0)
