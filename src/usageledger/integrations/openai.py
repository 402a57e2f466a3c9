"""Usage of OpenAI responses as usageledger record fields.

Works on the ``openai`` SDK's objects (``ChatCompletion``, a final ``ChatCompletionChunk``
with usage, ``responses.Response``, a ``response.completed`` stream event) and on plain
dicts of the same shape (``model_dump()`` or parsed JSON); the SDK itself is not imported.

Token convention: OpenAI counts cached prompt tokens inside ``prompt_tokens`` /
``input_tokens``; a usageledger record's ``input_tokens`` excludes them (see
:mod:`usageledger.pricing`), so ``input_tokens = prompt - cached - cache_write`` and the
cache counts go to ``cache_read_tokens`` / ``cache_write_tokens``: cached input is never
counted (or charged) twice. ``output_tokens`` includes reasoning tokens, which are also
given as ``reasoning_tokens``.

Audio and image tokens (``*_tokens_details.audio_tokens`` / ``.image_tokens``) are parts of
those counts, priced at their own rates: ``input_audio_tokens``/``input_image_tokens`` are
the uncached ones (cached audio or images are cache reads, priced as such),
``output_audio_tokens``/``output_image_tokens`` parts of the output. The response's
``service_tier`` (``default``, ``flex``, ``priority``...) picks that tier's prices.
"""

from __future__ import annotations

from typing import Any

from ._common import count, get, model_of, record_to, response_id

__all__ = ["usage_from_openai", "record_openai"]

PROVIDER = "openai"


def usage_from_openai(response: Any) -> dict[str, Any]:
    """``make_usage_record`` / ``Meter.record`` keywords for one OpenAI response: provider,
    model, the five token counts and ``response_id``. Raises ValueError for a response
    without usage (a stream read without ``stream_options={"include_usage": True}``, for
    instance) or with cache counts above the prompt total."""
    usage = get(response, "usage")
    if usage is None and get(response, "response") is not None:
        response = get(response, "response")  # a Responses stream event
        usage = get(response, "usage")
    if usage is None:
        raise ValueError(
            f"OpenAI response {response_id(response)!r} has no usage; for a stream, pass "
            "stream_options={'include_usage': True} (Chat Completions) or the final response"
        )
    if get(usage, "prompt_tokens") is not None:  # Chat Completions
        names = _CHAT
    elif get(usage, "input_tokens") is not None:  # Responses API
        names = _RESPONSES
    else:
        raise ValueError(
            f"OpenAI usage has neither prompt_tokens nor input_tokens: {usage!r}"
        )
    total_name, output_name, in_details, out_details, labels = names
    total = count(labels[0], get(usage, total_name))
    details = get(usage, in_details)
    cached = count(labels[1], get(details, "cached_tokens"))
    cache_write = count(labels[2], get(details, "cache_write_tokens"))
    if cached + cache_write > total:
        raise ValueError(
            f"usage.{total_name}={total} must include the cached tokens "
            f"(cached_tokens={cached}, cache_write_tokens={cache_write})"
        )
    output = count(labels[3], get(usage, output_name))
    out_detail = get(usage, out_details)
    fields = {
        "provider": PROVIDER,
        "model": model_of(response, "OpenAI"),
        "input_tokens": total - cached - cache_write,
        "output_tokens": output,
        "cache_read_tokens": cached,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": count(labels[4], get(out_detail, "reasoning_tokens")),
        "response_id": response_id(response),
    }
    if details is not None or out_detail is not None:
        _add_modalities(fields, details, out_detail, in_details, out_details)
    tier = get(response, "service_tier")
    if isinstance(tier, str) and tier:
        fields["service_tier"] = tier
    return fields


def _add_modalities(fields: dict[str, Any], details: Any, out_detail: Any, in_name: str,
                    out_name: str) -> None:
    """Audio and image parts, each kept within the count it is part of (a count reported
    above its whole is cut to it rather than charged twice)."""
    cached_detail = get(details, "cached_tokens_details")
    room = fields["input_tokens"]
    for kind in ("audio", "image"):
        n = count(f"usage.{in_name}.{kind}_tokens", get(details, f"{kind}_tokens"))
        n -= count(f"usage.{in_name}.cached_tokens_details.{kind}_tokens", get(cached_detail, f"{kind}_tokens"))
        n = min(max(n, 0), room)
        if n:
            fields[f"input_{kind}_tokens"] = n
            room -= n
    room = fields["output_tokens"]
    for kind in ("audio", "image"):
        n = min(count(f"usage.{out_name}.{kind}_tokens", get(out_detail, f"{kind}_tokens")), room)
        if n:
            fields[f"output_{kind}_tokens"] = n
            room -= n


def _shape(total: str, output: str, in_details: str, out_details: str) -> tuple[Any, ...]:
    # the field names used in error messages, made once rather than per response
    labels = (f"usage.{total}", f"usage.{in_details}.cached_tokens",
              f"usage.{in_details}.cache_write_tokens", f"usage.{output}",
              f"usage.{out_details}.reasoning_tokens")
    return total, output, in_details, out_details, labels


_CHAT = _shape("prompt_tokens", "completion_tokens", "prompt_tokens_details",
               "completion_tokens_details")
_RESPONSES = _shape("input_tokens", "output_tokens", "input_tokens_details",
                    "output_tokens_details")


def record_openai(target: Any, response: Any, **fields: Any) -> str:
    """Record the usage of ``response`` with ``target`` (a Meter, UsageTracker or
    PersistentDelivery); returns the record id. ``fields`` add to or override the
    extracted ones (``user_id``, ``tags``, ``cost``, ``provider="azure"``...)."""
    return record_to(target, {**usage_from_openai(response), **fields})
