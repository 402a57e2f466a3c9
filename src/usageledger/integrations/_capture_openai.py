"""Capture for the ``openai`` SDK: Chat Completions (``create``, ``parse``, streams and the
``stream()`` helper, which calls ``create``), Responses (same), Embeddings; sync and async;
``with_raw_response``; Azure clients (provider ``azure``, the deployment as tag
``deployment``).

Imported by :mod:`.capture` only once ``openai`` is imported."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from . import _capture_calls as capture
from ._capture_calls import Call, Patch, StreamUsage, begin, report, revert_patches, watch_stream
from .openai import usage_from_openai

PROVIDER = "openai"
RAW_HEADER = "X-Stainless-Raw-Response"

#: (module, class, method, api) for every method captured; ``api`` picks the usage reader
METHODS = (
    ("openai.resources.chat.completions.completions", "Completions", "create", "chat"),
    ("openai.resources.chat.completions.completions", "AsyncCompletions", "create", "chat"),
    ("openai.resources.chat.completions.completions", "Completions", "parse", "chat"),
    ("openai.resources.chat.completions.completions", "AsyncCompletions", "parse", "chat"),
    ("openai.resources.responses.responses", "Responses", "create", "responses"),
    ("openai.resources.responses.responses", "AsyncResponses", "create", "responses"),
    ("openai.resources.responses.responses", "Responses", "parse", "responses"),
    ("openai.resources.responses.responses", "AsyncResponses", "parse", "responses"),
    ("openai.resources.embeddings", "Embeddings", "create", "embeddings"),
    ("openai.resources.embeddings", "AsyncEmbeddings", "create", "embeddings"),
)

#: the GenAI ``gen_ai.operation.name`` of each API
OPERATIONS = {"chat": "chat", "responses": "chat", "embeddings": "embeddings"}


class ChatStreamUsage(StreamUsage):
    """A Chat Completions stream: usage is in the last chunk (``stream_options=
    {"include_usage": True}``), a chunk with ``choices=[]``; when we asked for it, the
    user does not get that chunk."""

    where = "openai chat stream"

    def __init__(self, call: Call, drop_usage_chunk: bool):
        super().__init__(call)
        self.drop = drop_usage_chunk
        self.last: Any = None

    def see(self, chunk: Any) -> bool:
        if getattr(chunk, "usage", None) is None:
            return True
        self.last = chunk
        return not (self.drop and not chunk.choices)

    def usage(self) -> dict[str, Any] | None:
        return None if self.last is None else usage_from_openai(self.last)


class ResponsesStreamUsage(StreamUsage):
    """A Responses stream: events carry the response; its usage is set in the final one
    (``response.completed``, ``.incomplete`` or ``.failed``)."""

    where = "openai responses stream"

    def __init__(self, call: Call):
        super().__init__(call)
        self.last: Any = None

    def see(self, event: Any) -> bool:
        response = getattr(event, "response", None)
        if response is not None and getattr(response, "usage", None) is not None:
            self.last = response
        return True

    def usage(self) -> dict[str, Any] | None:
        return None if self.last is None else usage_from_openai(self.last)


def _azure_client_type() -> type | None:
    try:
        from openai.lib.azure import BaseAzureClient
    except Exception:
        return None
    return BaseAzureClient


def _deployment(client: Any, kwargs: Mapping[str, Any]) -> str | None:
    name = getattr(client, "_azure_deployment", None)
    if isinstance(name, str) and name:
        return name
    path = str(getattr(getattr(client, "base_url", None), "path", "") or "")
    if "/deployments/" in path:  # a base_url that names the deployment
        name = path.split("/deployments/", 1)[1].split("/", 1)[0]
        if name:
            return name
    model = kwargs.get("model")
    return model if isinstance(model, str) and model else None


def _is_omitted(value: Any) -> bool:
    return value is None or type(value).__name__ in ("Omit", "NotGiven")


class Prepared:
    """Before the request: the call, the kwargs to send, how to read the result."""

    __slots__ = ("call", "kwargs", "api", "raw", "drop_usage_chunk")

    def __init__(self, resource: Any, api: str, kwargs: dict[str, Any], plan: Any,
                 attrs: Mapping[str, Any], azure: type | None):
        headers = kwargs.get("extra_headers")
        mode = headers.get(RAW_HEADER) if headers is not None else None
        stream = kwargs.get("stream") is True
        provider, tags = PROVIDER, None
        client = getattr(resource, "_client", None)
        if azure is not None and isinstance(client, azure):
            provider = "azure"
            deployment = _deployment(client, kwargs)
            if deployment:
                tags = {"deployment": deployment}
        self.call = Call(plan, attrs, provider, OPERATIONS[api], stream=stream, tags=tags)
        self.api = api
        self.raw = mode is not None
        self.kwargs = kwargs
        self.drop_usage_chunk = False
        if stream and api == "chat" and plan.stream_usage:
            options = kwargs.get("stream_options")
            if _is_omitted(options):
                self.kwargs = {**kwargs, "stream_options": {"include_usage": True}}
                self.drop_usage_chunk = True
            elif isinstance(options, Mapping) and not options.get("include_usage"):
                self.kwargs = {**kwargs, "stream_options": {**options, "include_usage": True}}
                self.drop_usage_chunk = True

    def stream_usage(self) -> StreamUsage:
        if self.api == "chat":
            return ChatStreamUsage(self.call, self.drop_usage_chunk)
        return ResponsesStreamUsage(self.call)

    def done(self, parsed: Any) -> None:
        """Record (or start observing) the parsed result."""
        if self.call.stream:
            watch_stream(parsed, self.stream_usage())
        else:
            self.call.emit(usage_from_openai(parsed))


def _streaming_response(kwargs: Mapping[str, Any]) -> bool:
    # with_streaming_response hands back the body unread: nothing to read usage from
    headers = kwargs.get("extra_headers")
    return headers is not None and headers.get(RAW_HEADER) == "stream"


def _wrap_sync(original: Any, api: str, azure: type | None) -> Any:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = begin(PROVIDER)
        if started is None:
            return original(self, *args, **kwargs)
        plan, attrs = started
        if _streaming_response(kwargs):
            return original(self, *args, **kwargs)
        try:
            prepared = Prepared(self, api, kwargs, plan, attrs, azure)
        except Exception as exc:
            report(f"openai {api} request", exc)
            return original(self, *args, **kwargs)
        result = original(self, *args, **prepared.kwargs)
        try:
            prepared.done(result.parse() if prepared.raw else result)
        except Exception as exc:
            report(f"openai {api} response", exc)
        return result

    wrapper.__usageledger_original__ = original  # type: ignore[attr-defined]
    return wrapper


def _wrap_async(original: Any, api: str, azure: type | None) -> Any:
    @functools.wraps(original)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = begin(PROVIDER)
        if started is None:
            return await original(self, *args, **kwargs)
        plan, attrs = started
        if _streaming_response(kwargs):
            return await original(self, *args, **kwargs)
        try:
            prepared = Prepared(self, api, kwargs, plan, attrs, azure)
        except Exception as exc:
            report(f"openai {api} request", exc)
            return await original(self, *args, **kwargs)
        result = await original(self, *args, **prepared.kwargs)
        try:
            if prepared.raw:
                parsed = result.parse()
                if inspect.isawaitable(parsed):
                    parsed = await parsed
            else:
                parsed = result
            prepared.done(parsed)
        except Exception as exc:
            report(f"openai {api} response", exc)
        return result

    wrapper.__usageledger_original__ = original  # type: ignore[attr-defined]
    return wrapper


def install() -> list[Patch]:
    """Patch every method of :data:`METHODS` the installed SDK has."""
    azure = _azure_client_type()
    patches: list[Patch] = []
    for module_name, class_name, method, api in METHODS:
        try:
            owner = getattr(importlib.import_module(module_name), class_name)
            original = getattr(owner, method)
        except (ImportError, AttributeError) as exc:
            capture.log.debug("openai %s.%s not captured: %s", class_name, method, exc)
            continue
        make = _wrap_async if class_name.startswith("Async") else _wrap_sync
        patch = Patch(owner, method, make(original, api, azure))
        patch.apply()
        patches.append(patch)
    return patches


uninstall = revert_patches
