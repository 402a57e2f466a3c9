"""Usage of Anthropic Messages responses as usageledger record fields.

Works on the ``anthropic`` SDK's ``Message`` (also ``stream.get_final_message()``) and on
plain dicts of the same shape; the SDK itself is not imported.

Token convention: Anthropic's ``usage.input_tokens`` already excludes cache reads and
writes, as a usageledger record's does, so it is taken as is;
``cache_read_input_tokens`` → ``cache_read_tokens``, ``cache_creation_input_tokens`` →
``cache_write_tokens``. ``output_tokens`` includes thinking tokens, also given as
``reasoning_tokens`` when the response reports ``output_tokens_details.thinking_tokens``.
Cache writes with a 1-hour lifetime (``cache_creation.ephemeral_1h_input_tokens``) are
also given as ``cache_write_1h_tokens`` (the rest are 5-minute writes), and
``usage.service_tier`` (``standard``, ``priority``, ``batch``) as ``service_tier``: both
are priced at their own rates.
"""

from __future__ import annotations

from typing import Any

from ._common import count, get, model_of, record_to, response_id

__all__ = ["usage_from_anthropic", "record_anthropic"]

PROVIDER = "anthropic"


def usage_from_anthropic(response: Any) -> dict[str, Any]:
    """``make_usage_record`` / ``Meter.record`` keywords for one Anthropic Messages
    response: provider, model, token counts and ``response_id``. Raises ValueError for a
    response without usage."""
    usage = get(response, "usage")
    if usage is None:
        raise ValueError(
            f"Anthropic response {response_id(response)!r} has no usage; for a stream, "
            "pass stream.get_final_message()"
        )
    fields = {
        "provider": PROVIDER,
        "model": model_of(response, "Anthropic"),
        "input_tokens": count("usage.input_tokens", get(usage, "input_tokens")),
        "output_tokens": count("usage.output_tokens", get(usage, "output_tokens")),
        "cache_read_tokens": count("usage.cache_read_input_tokens",
                                   get(usage, "cache_read_input_tokens")),
        "cache_write_tokens": count("usage.cache_creation_input_tokens",
                                    get(usage, "cache_creation_input_tokens")),
        "reasoning_tokens": count("usage.output_tokens_details.thinking_tokens",
                                  get(get(usage, "output_tokens_details"), "thinking_tokens")),
        "response_id": response_id(response),
    }
    creation = get(usage, "cache_creation")
    if creation is not None:
        five = count("usage.cache_creation.ephemeral_5m_input_tokens", get(creation, "ephemeral_5m_input_tokens"))
        hour = count("usage.cache_creation.ephemeral_1h_input_tokens", get(creation, "ephemeral_1h_input_tokens"))
        # the breakdown sums to cache_creation_input_tokens; should it not, the larger
        # count is the one billed
        fields["cache_write_tokens"] = max(fields["cache_write_tokens"], five + hour)
        if hour:
            fields["cache_write_1h_tokens"] = hour
    tier = get(usage, "service_tier")
    if isinstance(tier, str) and tier:
        fields["service_tier"] = tier
    return fields


def record_anthropic(target: Any, response: Any, **fields: Any) -> str:
    """Record the usage of ``response`` with ``target`` (a Meter, UsageTracker or
    PersistentDelivery); returns the record id. ``fields`` add to or override the
    extracted ones (``user_id``, ``tags``, ``provider="aws-bedrock"``...)."""
    return record_to(target, {**usage_from_anthropic(response), **fields})
