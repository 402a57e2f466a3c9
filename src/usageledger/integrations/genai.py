"""The one mapping between usageledger records and the OpenTelemetry GenAI semantic
conventions. Those names are still "development" upstream: when they change, this module
is the only place to change.

Token convention. A usageledger record's ``input_tokens`` EXCLUDES cache reads and cache
writes (the three are disjoint, see :mod:`usageledger.pricing`). The GenAI convention's
``gen_ai.usage.input_tokens`` counts ALL input tokens, cached ones included, with
``gen_ai.usage.cache_read.input_tokens`` / ``gen_ai.usage.cache_creation.input_tokens``
as parts of it. So ``to_genai_attributes`` adds the cache tokens to the input count and
``from_genai_attributes`` subtracts them again. Output tokens include reasoning tokens
in both (``gen_ai.usage.reasoning.output_tokens`` is a part of the output).

A record holds one model name, the one the provider reported (and billed): it is written
as both ``gen_ai.request.model`` and ``gen_ai.response.model``; reading prefers the
response model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema.records import UsageRecord
from ._common import count

__all__ = [
    "PROVIDER_NAME",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "RESPONSE_ID",
    "INPUT_TOKENS",
    "OUTPUT_TOKENS",
    "CACHE_READ_INPUT_TOKENS",
    "CACHE_CREATION_INPUT_TOKENS",
    "REASONING_OUTPUT_TOKENS",
    "TOKEN_TYPE",
    "TOKEN_USAGE_METRIC",
    "TOKEN_USAGE_BUCKETS",
    "OPERATION_NAME",
    "OPERATION_DURATION_METRIC",
    "OPERATION_DURATION_BUCKETS",
    "genai_input_tokens",
    "operation_name",
    "operation_duration",
    "has_token_usage",
    "to_genai_attributes",
    "from_genai_attributes",
    "metric_attributes",
    "token_usage",
]

PROVIDER_NAME = "gen_ai.provider.name"
#: the name before ``gen_ai.provider.name``; read when the new one is absent
LEGACY_SYSTEM = "gen_ai.system"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
#: older names of the two token counts, read when the current ones are absent
LEGACY_INPUT_TOKENS = "gen_ai.usage.prompt_tokens"
LEGACY_OUTPUT_TOKENS = "gen_ai.usage.completion_tokens"
OPERATION_NAME = "gen_ai.operation.name"
TOKEN_TYPE = "gen_ai.token.type"
TOKEN_USAGE_METRIC = "gen_ai.client.token.usage"
#: the bucket boundaries the convention advises for ``gen_ai.client.token.usage``
TOKEN_USAGE_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)
OPERATION_DURATION_METRIC = "gen_ai.client.operation.duration"
#: the bucket boundaries (seconds) the convention advises for the duration histogram
OPERATION_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
#: what a record without an ``operation`` in its payload is taken to be
DEFAULT_OPERATION = "chat"


def genai_input_tokens(record: UsageRecord) -> int:
    """All input tokens of ``record``, cache reads and writes included (GenAI's count)."""
    return record.input_tokens + record.cache_read_tokens + record.cache_write_tokens


def to_genai_attributes(record: UsageRecord) -> dict[str, str | int]:
    """GenAI span/event attributes of ``record`` (token counts in the GenAI convention:
    input includes cache tokens). Cache and reasoning counts appear when non-zero,
    ``gen_ai.response.id`` when the record has a ``response_id``."""
    attrs: dict[str, str | int] = {
        PROVIDER_NAME: record.provider,
        REQUEST_MODEL: record.model,
        RESPONSE_MODEL: record.model,
        INPUT_TOKENS: genai_input_tokens(record),
        OUTPUT_TOKENS: record.output_tokens,
    }
    if record.cache_read_tokens:
        attrs[CACHE_READ_INPUT_TOKENS] = record.cache_read_tokens
    if record.cache_write_tokens:
        attrs[CACHE_CREATION_INPUT_TOKENS] = record.cache_write_tokens
    if record.reasoning_tokens:
        attrs[REASONING_OUTPUT_TOKENS] = record.reasoning_tokens
    if record.response_id is not None:
        attrs[RESPONSE_ID] = record.response_id
    return attrs


def from_genai_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``make_usage_record`` keywords from GenAI attributes (e.g. a span's). Needs a
    provider (``gen_ai.provider.name``, or the older ``gen_ai.system``) and a model
    (response model, else request model); raises ValueError naming what is missing or
    inconsistent (cache tokens above the input total)."""
    provider = attrs.get(PROVIDER_NAME) or attrs.get(LEGACY_SYSTEM)
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"{PROVIDER_NAME} must be a non-empty string, got {provider!r}")
    model = attrs.get(RESPONSE_MODEL) or attrs.get(REQUEST_MODEL)
    if not isinstance(model, str) or not model:
        raise ValueError(
            f"{RESPONSE_MODEL} or {REQUEST_MODEL} must be a non-empty string, got {model!r}"
        )
    total_input = count(INPUT_TOKENS, _first(attrs, INPUT_TOKENS, LEGACY_INPUT_TOKENS))
    cache_read = count(CACHE_READ_INPUT_TOKENS, attrs.get(CACHE_READ_INPUT_TOKENS))
    cache_write = count(CACHE_CREATION_INPUT_TOKENS, attrs.get(CACHE_CREATION_INPUT_TOKENS))
    if cache_read + cache_write > total_input:
        raise ValueError(
            f"{INPUT_TOKENS}={total_input} must include the cache tokens "
            f"({CACHE_READ_INPUT_TOKENS}={cache_read}, {CACHE_CREATION_INPUT_TOKENS}={cache_write})"
        )
    fields: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "input_tokens": total_input - cache_read - cache_write,
        "output_tokens": count(OUTPUT_TOKENS, _first(attrs, OUTPUT_TOKENS, LEGACY_OUTPUT_TOKENS)),
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": count(REASONING_OUTPUT_TOKENS, attrs.get(REASONING_OUTPUT_TOKENS)),
    }
    response_id = attrs.get(RESPONSE_ID)
    if isinstance(response_id, str) and response_id:
        fields["response_id"] = response_id
    return fields


def _first(attrs: Mapping[str, Any], name: str, legacy: str) -> Any:
    value = attrs.get(name)
    return attrs.get(legacy) if value is None else value


def has_token_usage(attrs: Mapping[str, Any]) -> bool:
    """Whether ``attrs`` (a span's) report token counts."""
    return any(attrs.get(k) is not None for k in (INPUT_TOKENS, OUTPUT_TOKENS,
                                                  LEGACY_INPUT_TOKENS, LEGACY_OUTPUT_TOKENS))


def operation_name(record: UsageRecord) -> str:
    """``gen_ai.operation.name`` of ``record``: its payload's ``operation`` (set by the
    capture of SDK calls: ``chat``, ``embeddings``), else ``chat``."""
    payload = record.payload
    operation = payload.get("operation") if payload else None
    return operation if isinstance(operation, str) and operation else DEFAULT_OPERATION


def operation_duration(record: UsageRecord) -> float | None:
    """The call's duration in seconds from its payload's ``latency_ms`` (set by the
    capture of SDK calls); None when the record has none."""
    payload = record.payload
    latency = payload.get("latency_ms") if payload else None
    if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
        return None
    return latency / 1000.0


def metric_attributes(record: UsageRecord) -> dict[str, str]:
    """The low-cardinality attributes of ``gen_ai.client.token.usage`` and
    ``gen_ai.client.operation.duration`` for ``record`` (no ids or counts: every distinct
    attribute set is a separate time series)."""
    return {OPERATION_NAME: operation_name(record), PROVIDER_NAME: record.provider,
            REQUEST_MODEL: record.model, RESPONSE_MODEL: record.model}


def token_usage(record: UsageRecord) -> tuple[tuple[str, int], ...]:
    """``(gen_ai.token.type, tokens)`` pairs for the token usage histogram: ``input``
    (cache tokens included, as ``gen_ai.usage.input_tokens``) and ``output``."""
    return (
        ("input", genai_input_tokens(record)),
        ("output", record.output_tokens),
    )
