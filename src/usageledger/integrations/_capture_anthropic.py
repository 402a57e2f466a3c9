"""Capture for the ``anthropic`` SDK: ``messages.create`` (also ``stream=True`` and
``with_raw_response``), ``messages.parse`` and ``messages.stream(...)``, sync and async.

``messages.stream(...)`` returns a manager that sends the request when entered; the
manager stays the SDK's own, only the request function it holds is wrapped so that the
raw event stream it gets is observed (``text_stream``, ``get_final_message()``,
``get_final_text()`` are the SDK's, reading the same events).

Imported by :mod:`.capture` only once ``anthropic`` is imported."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from . import _capture_calls as capture
from ._capture_calls import Call, Patch, StreamUsage, begin, report, revert_patches, watch_stream
from .anthropic import usage_from_anthropic

PROVIDER = "anthropic"
RAW_HEADER = "X-Stainless-Raw-Response"
MODULE = "anthropic.resources.messages.messages"

#: (class, method, kind): ``call`` for create/parse, ``manager`` for stream()
METHODS = (
    ("Messages", "create", "call"),
    ("AsyncMessages", "create", "call"),
    ("Messages", "parse", "call"),
    ("AsyncMessages", "parse", "call"),
    ("Messages", "stream", "manager"),
    ("AsyncMessages", "stream", "manager"),
)

_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
                 "cache_creation_input_tokens", "output_tokens_details", "cache_creation",
                 "service_tier")


class MessageStreamUsage(StreamUsage):
    """``message_start`` gives the model, id and input usage; each ``message_delta`` the
    cumulative output count (and, in newer API versions, updated input counts)."""

    where = "anthropic message stream"

    def __init__(self, call: Call):
        super().__init__(call)
        self.message: Any = None
        self.counts: dict[str, Any] = {}

    def see(self, event: Any) -> bool:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.message = event.message
            self._merge(getattr(event.message, "usage", None))
        elif kind == "message_delta":
            self._merge(getattr(event, "usage", None))
        return True

    def _merge(self, usage: Any) -> None:
        if usage is None:
            return
        for name in _USAGE_FIELDS:
            value = getattr(usage, name, None)
            if value is not None:
                self.counts[name] = value

    def usage(self) -> dict[str, Any] | None:
        if self.message is None:
            return None
        return usage_from_anthropic({"id": getattr(self.message, "id", None),
                                     "model": getattr(self.message, "model", None),
                                     "usage": self.counts})


def _mode(kwargs: Mapping[str, Any]) -> Any:
    headers = kwargs.get("extra_headers")  # the SDKs type it as a mapping
    return headers.get(RAW_HEADER) if headers is not None else None


def _record(call: Call, parsed: Any) -> None:
    if call.stream:
        watch_stream(parsed, MessageStreamUsage(call))
    else:
        call.emit(usage_from_anthropic(parsed))


def _wrap_sync(original: Any) -> Any:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = begin(PROVIDER)
        if started is None:
            return original(self, *args, **kwargs)
        plan, attrs = started
        mode = _mode(kwargs)
        if mode == "stream":  # with_streaming_response: the body is the caller's to read
            return original(self, *args, **kwargs)
        call = Call(plan, attrs, PROVIDER, "chat", stream=kwargs.get("stream") is True)
        result = original(self, *args, **kwargs)
        try:
            _record(call, result.parse() if mode is not None else result)
        except Exception as exc:
            report("anthropic messages response", exc)
        return result

    wrapper.__usageledger_original__ = original  # type: ignore[attr-defined]
    return wrapper


def _wrap_async(original: Any) -> Any:
    @functools.wraps(original)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = begin(PROVIDER)
        if started is None:
            return await original(self, *args, **kwargs)
        plan, attrs = started
        mode = _mode(kwargs)
        if mode == "stream":
            return await original(self, *args, **kwargs)
        call = Call(plan, attrs, PROVIDER, "chat", stream=kwargs.get("stream") is True)
        result = await original(self, *args, **kwargs)
        try:
            if mode is not None:
                parsed = result.parse()
                if inspect.isawaitable(parsed):
                    parsed = await parsed
            else:
                parsed = result
            _record(call, parsed)
        except Exception as exc:
            report("anthropic messages response", exc)
        return result

    wrapper.__usageledger_original__ = original  # type: ignore[attr-defined]
    return wrapper


def _request_slot(manager: Any) -> str:
    """The name of the manager's private request attribute (``self.__api_request``)."""
    for name in vars(manager):
        if name.endswith("__api_request"):
            return name
    raise AttributeError(f"{type(manager).__name__} has no __api_request attribute")


def _wrap_manager(original: Any) -> Any:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = begin(PROVIDER)
        if started is None:
            return original(self, *args, **kwargs)
        plan, attrs = started
        manager = original(self, *args, **kwargs)
        try:
            slot = _request_slot(manager)
            request = getattr(manager, slot)
            call = Call(plan, attrs, PROVIDER, "chat", stream=True)
            if inspect.isawaitable(request):  # async: a coroutine awaited on __aenter__
                setattr(manager, slot, _observed_async(request, call))
            else:
                setattr(manager, slot, functools.partial(_observed, request, call))
        except Exception as exc:
            report("anthropic messages.stream", exc)
        return manager

    wrapper.__usageledger_original__ = original  # type: ignore[attr-defined]
    return wrapper


def _observed(request: Any, call: Call) -> Any:
    call.start()  # the request is sent now, when the manager is entered
    stream = request()
    try:
        watch_stream(stream, MessageStreamUsage(call))
    except Exception as exc:
        report("anthropic messages.stream", exc)
    return stream


async def _observed_async(request: Any, call: Call) -> Any:
    call.start()
    stream = await request
    try:
        watch_stream(stream, MessageStreamUsage(call))
    except Exception as exc:
        report("anthropic messages.stream", exc)
    return stream


def install() -> list[Patch]:
    module = importlib.import_module(MODULE)
    patches: list[Patch] = []
    for class_name, method, kind in METHODS:
        owner = getattr(module, class_name, None)
        original = getattr(owner, method, None)
        if original is None:
            capture.log.debug("anthropic %s.%s not captured: not in this SDK version",
                              class_name, method)
            continue
        if kind == "manager":
            wrapper = _wrap_manager(original)
        elif class_name.startswith("Async"):  # their create is a sync def returning a coroutine
            wrapper = _wrap_async(original)
        else:
            wrapper = _wrap_sync(original)
        patch = Patch(owner, method, wrapper)
        patch.apply()
        patches.append(patch)
    return patches


uninstall = revert_patches
