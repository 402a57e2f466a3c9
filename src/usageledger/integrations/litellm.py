"""LiteLLM: a success callback recording every call's usage with any target.

``usageledger.instrument(target)`` registers it when ``litellm`` is imported (then the
``openai``/``anthropic`` wrappers step aside for calls LiteLLM makes through those SDKs, so
a call is recorded once). Without ``instrument``::

    import litellm
    from usageledger.integrations.litellm import litellm_callback
    litellm.callbacks = [litellm_callback(meter)]

Usage comes from ``response_obj.usage`` (object or dict) in LiteLLM's OpenAI shape:
``prompt_tokens`` includes cached tokens, given as ``prompt_tokens_details.cached_tokens``
(or, for Anthropic through LiteLLM, ``cache_read_input_tokens``), cache writes as
``cache_creation_input_tokens``; the model is ``kwargs["model"]``, the provider
``kwargs["litellm_params"]["custom_llm_provider"]`` (or the model's ``provider/`` prefix).
The cost comes from our price tables (the target's ``prices`` overrides when it has them);
for a model they do not know, LiteLLM's own ``response_cost``. A callback never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ..schema.records import check_cost
from ._common import get, recorder_for
from .context import current_attributes

__all__ = ["usage_from_litellm", "litellm_cost", "LiteLLMRecorder", "LiteLLMHooks", "litellm_callback"]

log = logging.getLogger("usageledger.litellm")


def split_model(model: Any) -> tuple[str, Any]:
    """``"openai/gpt-4o"`` -> ``("openai", "gpt-4o")``; a bare name -> ``("unknown", name)``."""
    if isinstance(model, str) and "/" in model:
        provider, _, rest = model.partition("/")
        if provider and rest:
            return provider, rest
    return "unknown", model


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_litellm(kwargs: Any, response_obj: Any) -> dict[str, Any] | None:
    """``make_usage_record`` keywords (with ``cost=None``) from what LiteLLM passes a
    success callback; None for an event without usage or model name."""
    kwargs = kwargs if isinstance(kwargs, Mapping) else {}
    if response_obj is None:
        response_obj = kwargs.get("complete_streaming_response")
    usage = get(response_obj, "usage")
    if usage is None:
        log.debug("LiteLLM event without usage; nothing recorded")
        return None
    prompt = _int(get(usage, "prompt_tokens"))
    output = _int(get(usage, "completion_tokens"))
    cache_read = _int(get(usage, "cache_read_input_tokens")) or _int(
        get(get(usage, "prompt_tokens_details"), "cached_tokens"))
    cache_write = _int(get(usage, "cache_creation_input_tokens"))
    reasoning = _int(get(get(usage, "completion_tokens_details"), "reasoning_tokens"))
    params = kwargs.get("litellm_params") or {}
    provider = get(params, "custom_llm_provider") or kwargs.get("custom_llm_provider")
    model = kwargs.get("model") or get(response_obj, "model")
    if not isinstance(model, str) or not model:
        log.warning("LiteLLM event without a model name; nothing recorded")
        return None
    if isinstance(provider, str) and provider:
        if model.startswith(provider + "/"):
            model = model[len(provider) + 1:]
    else:
        provider, model = split_model(model)
    response_id = get(response_obj, "id")
    fields = {
        "model": model,
        "provider": provider,
        "input_tokens": max(prompt - cache_read - cache_write, 0),
        "output_tokens": output,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
        "response_id": response_id if isinstance(response_id, str) and response_id else None,
        "cost": None,
    }
    _add_parts(fields, usage, response_obj)
    return fields


def _add_parts(fields: dict[str, Any], usage: Any, response_obj: Any) -> None:
    """Audio parts (OpenAI's details, as LiteLLM passes them on), 1-hour cache writes
    (Anthropic's ``cache_creation``) and the service tier, each kept within its whole."""
    room = fields["input_tokens"]
    audio_in = min(_int(get(get(usage, "prompt_tokens_details"), "audio_tokens")), room)
    image_in = min(_int(get(get(usage, "prompt_tokens_details"), "image_tokens")), room - audio_in)
    room = fields["output_tokens"]
    audio_out = min(_int(get(get(usage, "completion_tokens_details"), "audio_tokens")), room)
    image_out = min(_int(get(get(usage, "completion_tokens_details"), "image_tokens")), room - audio_out)
    hour = min(_int(get(get(usage, "cache_creation"), "ephemeral_1h_input_tokens")),
               fields["cache_write_tokens"])
    for name, n in (("input_audio_tokens", audio_in), ("input_image_tokens", image_in),
                    ("output_audio_tokens", audio_out), ("output_image_tokens", image_out),
                    ("cache_write_1h_tokens", hour)):
        if n:
            fields[name] = n
    tier = get(response_obj, "service_tier") or get(usage, "service_tier")
    if isinstance(tier, str) and tier:
        fields["service_tier"] = tier


#: the finer counts calculate_cost prices apart (see usageledger.records.DETAIL_TOKEN_FIELDS)
_PRICED_PARTS = ("cache_write_1h_tokens", "input_audio_tokens", "output_audio_tokens",
                 "input_image_tokens", "output_image_tokens", "reasoning_tokens")


def litellm_cost(fields: Mapping[str, Any], kwargs: Any,
                 prices: Mapping[str, Any] | None = None) -> Decimal | None:
    """The cost of ``fields`` from our price tables (with ``prices`` overrides); for a
    model they do not know, LiteLLM's ``kwargs["response_cost"]``; None when neither."""
    from ..prices.pricing import calculate_cost

    try:
        parts = {k: fields[k] for k in _PRICED_PARTS if fields.get(k)}
        cost = calculate_cost(
            fields["model"], fields["input_tokens"], fields["output_tokens"],
            provider=fields["provider"], cache_read_tokens=fields["cache_read_tokens"],
            cache_write_tokens=fields["cache_write_tokens"], prices=prices,
            service_tier=fields.get("service_tier"), **parts,
        )
    except Exception as exc:  # a price table problem must not lose the record
        log.warning("pricing %r failed: %r", fields.get("model"), exc)
        cost = None
    if cost is None and isinstance(kwargs, Mapping):
        try:
            cost = check_cost(kwargs.get("response_cost"))
        except (TypeError, ValueError):
            cost = None
    return cost


def _when(value: Any) -> datetime | None:
    # LiteLLM passes naive local datetimes: astimezone() reads a naive one as local time
    return value.astimezone(UTC) if isinstance(value, datetime) else None


#: the key under which the caller's attributes ride in LiteLLM's call details
ATTRIBUTES_KEY = "usageledger_attributes"

#: where a recorder sends a record: a function taking ``make_usage_record`` keywords, and
#: the price overrides of that target (None for the default tables)
Destination = tuple[Callable[[dict[str, Any]], Any], Mapping[str, Any] | None]


class LiteLLMRecorder:
    """LiteLLM's ``CustomLogger`` hooks, recording with every destination that
    ``destinations()`` gives (see :data:`Destination`).

    Adds the attributes in context (LiteLLM runs callbacks in a copy of the caller's
    context), the call's start time as the record's time, and ``payload`` with the
    ``operation`` and ``latency_ms``; the cost is priced per destination (its overrides)."""

    def __init__(self, destinations: Callable[[], Iterable[Destination]]):
        self.destinations = destinations

    @classmethod
    def to(cls, record: Callable[[dict[str, Any]], Any],
           prices: Mapping[str, Any] | None = None) -> LiteLLMRecorder:
        """A recorder with one destination."""
        only = ((record, prices),)
        return cls(lambda: only)

    def fields(self, kwargs: Any, response_obj: Any, start_time: Any,
               end_time: Any) -> dict[str, Any] | None:
        """The record keywords of one event (``cost`` None: priced per destination)."""
        args = usage_from_litellm(kwargs, response_obj)
        if args is None:
            return None
        stashed = kwargs.get(ATTRIBUTES_KEY) if isinstance(kwargs, Mapping) else None
        args.update(stashed if isinstance(stashed, Mapping) else current_attributes())
        start, end = _when(start_time), _when(end_time)
        if start is not None:
            args["timestamp"] = start
        call_type = kwargs.get("call_type") if isinstance(kwargs, Mapping) else None
        payload: dict[str, Any] = {
            "operation": "embeddings" if "embedding" in str(call_type or "") else "chat"}
        if start is not None and end is not None and end >= start:
            payload["latency_ms"] = round((end - start).total_seconds() * 1000.0, 3)
        args["payload"] = payload
        return args

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        """Keep the caller's attributes in the call's details: LiteLLM runs the success
        callback of a sync stream in a thread that does not copy the caller's context."""
        try:
            if isinstance(kwargs, dict):
                kwargs[ATTRIBUTES_KEY] = current_attributes()
        except Exception:
            log.exception("reading the attributes of a LiteLLM call failed")

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        """Record the usage of a finished call. Never raises (a callback error must not
        break the LLM call)."""
        try:
            args = self.fields(kwargs, response_obj, start_time, end_time)
            if args is None:
                return
            for record, prices in self.destinations():
                try:
                    record({**args, "cost": litellm_cost(args, kwargs, prices)})
                except Exception:
                    log.exception("recording a LiteLLM success event failed")
        except Exception:
            log.exception("recording a LiteLLM success event failed")

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.log_success_event(kwargs, response_obj, start_time, end_time)


class LiteLLMHooks:
    """LiteLLM's ``CustomLogger`` hook methods for a class whose instances record
    (``record(**fields)``, or a :class:`~usageledger.delivery.PersistentDelivery`): each
    instance is then a callback of its own, recording with itself through one
    :class:`LiteLLMRecorder`. ``UsageTracker`` has them this way. LiteLLM calls
    class-based callbacks only for ``CustomLogger`` subclasses, so give LiteLLM
    :meth:`litellm_callback` (the ``log_*`` methods serve direct calls and older
    LiteLLMs); the hooks never raise."""

    def _litellm_recorder(self) -> LiteLLMRecorder:
        recorder = self.__dict__.get("_litellm_recorder_")
        if recorder is None:
            recorder = LiteLLMRecorder.to(recorder_for(self), getattr(self, "prices", None))
            self.__dict__["_litellm_recorder_"] = recorder
        return recorder

    def litellm_callback(self) -> Any:
        """A ``litellm.integrations.custom_logger.CustomLogger`` recording with this
        object: ``litellm.callbacks = [obj.litellm_callback()]``. Needs litellm installed."""
        return litellm_callback(self)

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        self._litellm_recorder().log_pre_api_call(model, messages, kwargs)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Records the usage of a finished call. Never raises (a callback error must not
        break the LLM call)."""
        self._litellm_recorder().log_success_event(kwargs, response_obj, start_time, end_time)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self._litellm_recorder().log_success_event(kwargs, response_obj, start_time, end_time)

    # the other hooks LiteLLM may call have nothing to record
    def log_post_api_call(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    def log_stream_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    async def async_log_stream_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                     end_time: Any) -> None:
        pass

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        pass


def _callback_class() -> type:
    from litellm.integrations.custom_logger import CustomLogger  # type: ignore[import-not-found]

    class UsageLedgerCallback(CustomLogger):  # type: ignore[misc, valid-type]
        """LiteLLM calls class-based callbacks only for ``CustomLogger`` subclasses."""

        def __init__(self, recorder: LiteLLMRecorder):
            super().__init__()
            self.recorder = recorder

        def log_pre_api_call(self, model, messages, kwargs):  # type: ignore[no-untyped-def]
            self.recorder.log_pre_api_call(model, messages, kwargs)

        def log_success_event(self, kwargs, response_obj, start_time, end_time):  # type: ignore[no-untyped-def]
            self.recorder.log_success_event(kwargs, response_obj, start_time, end_time)

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # type: ignore[no-untyped-def]
            self.recorder.log_success_event(kwargs, response_obj, start_time, end_time)

    return UsageLedgerCallback


def litellm_callback(target: Any) -> Any:
    """A LiteLLM ``CustomLogger`` recording every successful call with ``target`` (Meter,
    PersistentDelivery, UsageTracker, or anything with ``record(**fields)``):
    ``litellm.callbacks = [litellm_callback(meter)]``. Needs litellm installed."""
    recorder = LiteLLMRecorder.to(recorder_for(target), getattr(target, "prices", None))
    return _callback_class()(recorder)


# -- used by usageledger.instrument ---------------------------------------------------------
def _plan_destinations() -> Iterable[Destination]:
    from ._capture_calls import plans

    plan = plans.get("litellm")
    if plan is None:
        return ()
    return [(h.emit, getattr(h.target, "prices", None)) for h in plan.handles]


def install() -> Any:
    """Register one callback that records with every handle capturing ``litellm``."""
    import litellm  # type: ignore[import-not-found]

    callback = _callback_class()(LiteLLMRecorder(_plan_destinations))
    manager = getattr(litellm, "logging_callback_manager", None)
    if manager is not None and hasattr(manager, "add_litellm_callback"):
        manager.add_litellm_callback(callback)
    else:
        litellm.callbacks.append(callback)
    return callback


def uninstall(callback: Any) -> None:
    import litellm

    manager = getattr(litellm, "logging_callback_manager", None)
    if manager is not None and hasattr(manager, "remove_callback_from_all_lists"):
        manager.remove_callback_from_all_lists(callback)
        return
    for name in ("callbacks", "success_callback", "_async_success_callback"):
        entries = getattr(litellm, name, None)
        if isinstance(entries, list):
            while callback in entries:
                entries.remove(callback)
