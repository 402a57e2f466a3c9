"""Records: the one schema shared by client, journal, wire and storage.

Every record is a msgspec Struct with a client-made UUIDv7 ``id``; the collector and
every storage backend ignore a second copy of an ``id`` (exactly once in effect).

Validation here runs in the caller's thread, so it is strict but cheap: type checks and
range checks only. Invalid input raises ``ValueError``/``TypeError`` naming the field
and the bad value, and nothing is written.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import uuid_utils

from .limits import (
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_PAYLOAD_BYTES,
    MAX_TEXT_CHARS,
    cost_error,
    depth_error,
    short,
    tags_error,
    text_error,
    token_parts_error,
)
from .totals import total_tokens

__all__ = [
    "UsageRecord",
    "new_id",
    "make_usage_record",
    "encode",
    "decode_usage",
    "to_utc",
    "TOKEN_FIELDS",
    "DETAIL_TOKEN_FIELDS",
    "KIND_USAGE",
    "KIND_RAW",
    "KIND_RUN",
    "ACCEPTED",
    "DUPLICATE",
    "REJECTED",
    "CREATED",
    "UPDATED",
    "STALE",
    "MISSING",
    "OK",
    "STORED",
    "TRACK_RESULTS",
    "RUN_RESULTS",
    "STORED_RESULTS",
]

#: journal item kinds; the journal never parses payloads, sinks route on the kind.
KIND_USAGE = "usage"
KIND_RAW = "raw"  # a caller's own dict (PersistentDelivery.enqueue)
KIND_RUN = "run"  # one write of an agent run: {"id", "run_id", "seq", "create", ...fields}

# -- result words: what the collector answers per item, what storage answers per run write,
# and what a client reads back (one list, so the three never drift apart) ---------------------
ACCEPTED = "accepted"  # a record newly stored
DUPLICATE = "duplicate"  # its id was stored already (or a run create that is not newer)
REJECTED = "rejected"  # refused by validation (with an error): never stored
CREATED = "created"  # a run write that created the run
UPDATED = "updated"  # a run write newer than the stored state
STALE = "stale"  # a run update that is not newer than the stored state
MISSING = "missing"  # a run update whose run does not exist (yet)
OK = "ok"  # stored, from a destination that does not say more
STORED = "stored"  # the same
#: per-item results of ``/track``
TRACK_RESULTS = (ACCEPTED, DUPLICATE, REJECTED)
#: what a storage's ``write_runs`` answers per write
RUN_RESULTS = (CREATED, UPDATED, DUPLICATE, STALE, MISSING)
#: results that settle an item as delivered (a run write that is not newer is settled too)
STORED_RESULTS = frozenset({ACCEPTED, DUPLICATE, OK, STORED, CREATED, UPDATED, STALE})

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
#: finer counts WITHIN the kinds above, each priced at its own rate where the price table
#: has one: the 1-hour part of the cache writes, the audio and image parts of the uncached
#: input and of the output (see usageledger.limits.token_parts_error)
DETAIL_TOKEN_FIELDS = (
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
)

_uuid7 = uuid_utils.uuid7


def new_id() -> str:
    """A new UUIDv7 as a string: time-ordered, so journal and storage indexes stay local."""
    return str(_uuid7())


class UsageRecord(msgspec.Struct, omit_defaults=True):
    """One LLM call's usage. ``cost`` is exact (Decimal) or None when unknown.

    ``input_tokens``, ``cache_read_tokens``, ``cache_write_tokens`` and ``output_tokens`` are
    disjoint; the fields after ``payload`` break them down further (never counted twice):
    ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written with a 1-hour
    lifetime (the rest is the 5-minute kind), ``input_audio_tokens``/``input_image_tokens``
    are parts of ``input_tokens``, ``output_audio_tokens``/``output_image_tokens`` parts of
    ``output_tokens``. ``service_tier`` is the tier the provider served the call at
    (``"batch"``, ``"flex"``, ``"priority"``, ``"default"``...; None: standard).

    Field order is part of the API: ``make_usage_record`` builds it positionally, which
    costs a sixth of keyword construction on the hot path. New fields go at the end."""

    id: str
    timestamp: datetime
    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal | None = None
    currency: str = "USD"
    user_id: str | None = None
    session_id: str | None = None
    customer_key: str | None = None
    run_id: str | None = None
    response_id: str | None = None
    tags: dict[str, str] = {}
    payload: dict[str, Any] | None = None
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    service_tier: str | None = None

    @property
    def total_tokens(self) -> int:
        """Uncached input + cache reads + cache writes + output: see usageledger.totals."""
        return total_tokens(self.input_tokens, self.output_tokens, self.cache_read_tokens,
                            self.cache_write_tokens)


_encoder = msgspec.json.Encoder(decimal_format="string")
_usage_decoder = msgspec.json.Decoder(UsageRecord)

encode = _encoder.encode


def decode_usage(data: bytes | str) -> UsageRecord:
    """Decode one JSON usage record (as produced by :func:`encode`)."""
    return _usage_decoder.decode(data)


def to_utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _bad(field: str, value: Any, expected: str, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"{field} must be {expected}, got {value!r}")


def _check_tokens(field: str, value: Any) -> int:
    if type(value) is int:
        if value < 0:
            raise _bad(field, value, "a non-negative integer")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, value, "a non-negative integer", TypeError)
    if value < 0:
        raise _bad(field, value, "a non-negative integer")
    return int(value)


def _check_str(field: str, value: Any, *, required: bool = False, limit: int = MAX_TEXT_CHARS) -> str | None:
    if value is None and not required:
        return None
    if type(value) is not str:
        raise TypeError(f"{field} must be a string, got {short(value)}")
    if required and not value:
        raise _bad(field, value, "a non-empty string")
    error = text_error(field, value, limit)
    if error:
        raise ValueError(error)
    return value


def _check_cost_limits(cost: Decimal) -> Decimal:
    error = cost_error(cost)
    if error:
        raise ValueError(error)
    return cost


def check_cost(value: Any) -> Decimal | None:
    """Cost as an exact Decimal; floats are converted through their shortest repr."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad("cost", value, "a finite non-negative number", TypeError)
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _bad("cost", value, "a finite non-negative number")
        d = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            d = Decimal(value)
        except InvalidOperation:
            raise _bad("cost", value, "a finite non-negative number") from None
    else:
        raise _bad("cost", value, "a finite non-negative number", TypeError)
    if not d.is_finite() or d < 0:
        raise _bad("cost", value, "a finite non-negative number")
    return d


def check_tags(tags: Any) -> dict[str, str]:
    """A copy of ``tags`` (the caller may mutate theirs later) with str keys and values."""
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise _bad("tags", tags, "a dict of str to str", TypeError)
    for k, v in tags.items():
        if type(k) is not str:
            raise TypeError(f"tags keys must be strings, got {k!r}")
        if type(v) is not str:
            raise TypeError(f"tags[{k!r}] must be a string, got {v!r}")
    error = tags_error(tags)
    if error:
        raise ValueError(error)
    return dict(tags)


def check_json_object(
    field: str, value: Any, max_bytes: int | None = None
) -> dict[str, Any] | None:
    """A JSON object (dict with str keys, finite numbers, at most ``MAX_JSON_DEPTH``
    levels, at most ``max_bytes`` encoded), copied by a JSON round trip."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(field, value, "a JSON object (dict)", TypeError)
    data = _encode_checked(field, value)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{field} must encode to at most {max_bytes} bytes of JSON, got {len(data)}")
    return msgspec.json.decode(data)


def encode_json_object(field: str, value: Any) -> bytes:
    """Encode a caller's dict as JSON bytes, raising TypeError/ValueError naming ``field``
    for what JSON cannot hold (so the caller learns now, not the dispatcher later)."""
    if type(value) is not dict:
        raise _bad(field, value, "a dict", TypeError)
    # the collector reads the object's ``payload`` at MAX_JSON_DEPTH: one level more here
    return _encode_checked(field, value, MAX_JSON_DEPTH + 1)


def _encode_checked(field: str, value: Any, depth: int = MAX_JSON_DEPTH) -> bytes:
    # depth first: a circular dict would recurse until RecursionError in the encoder
    error = depth_error(field, value, depth)
    if error:
        raise ValueError(f"{error} (or refers to itself)")
    try:
        data = _encoder.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"{field} is not JSON-serialisable: {exc}") from None
    if b"null" in data:
        # msgspec writes non-finite floats as null; refuse them instead of altering data
        _reject_non_finite(field, value)
    return data


def _reject_non_finite(field: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(field, value, "finite (NaN/inf are not JSON)")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(f"{field}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _reject_non_finite(f"{field}[{i}]", v)


def make_usage_record(
    provider: str,
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    *,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    cost: Any = None,
    currency: str = "USD",
    user_id: str | None = None,
    session_id: str | None = None,
    customer_key: str | None = None,
    run_id: str | None = None,
    response_id: str | None = None,
    tags: dict[str, str] | None = None,
    payload: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
    id: str | None = None,
    cache_write_1h_tokens: int = 0,
    input_audio_tokens: int = 0,
    output_audio_tokens: int = 0,
    input_image_tokens: int = 0,
    output_image_tokens: int = 0,
    service_tier: str | None = None,
) -> UsageRecord:
    """Validate arguments and build a :class:`UsageRecord` (the hot path of ``record()``).

    Written as inline type tests on the common case (exact ints and strs) because this
    runs in the caller's thread on every call; the helpers only run to raise or convert.
    """
    if type(provider) is not str or not provider or len(provider) > MAX_TEXT_CHARS:
        _check_str("provider", provider, required=True)
    if type(model) is not str or not model or len(model) > MAX_TEXT_CHARS:
        _check_str("model", model, required=True)
    if type(input_tokens) is not int or input_tokens < 0:
        input_tokens = _check_tokens("input_tokens", input_tokens)
    if type(output_tokens) is not int or output_tokens < 0:
        output_tokens = _check_tokens("output_tokens", output_tokens)
    if type(cache_read_tokens) is not int or cache_read_tokens < 0:
        cache_read_tokens = _check_tokens("cache_read_tokens", cache_read_tokens)
    if type(cache_write_tokens) is not int or cache_write_tokens < 0:
        cache_write_tokens = _check_tokens("cache_write_tokens", cache_write_tokens)
    if type(reasoning_tokens) is not int or reasoning_tokens < 0:
        reasoning_tokens = _check_tokens("reasoning_tokens", reasoning_tokens)
    if cost is not None:
        cost = _check_cost_limits(check_cost(cost))
    if type(currency) is not str or not currency or len(currency) > MAX_TEXT_CHARS:
        _check_str("currency", currency, required=True)
    if user_id is not None and (type(user_id) is not str or len(user_id) > MAX_TEXT_CHARS):
        _check_str("user_id", user_id)
    if session_id is not None and (type(session_id) is not str or len(session_id) > MAX_TEXT_CHARS):
        _check_str("session_id", session_id)
    if customer_key is not None and (type(customer_key) is not str or len(customer_key) > MAX_TEXT_CHARS):
        _check_str("customer_key", customer_key)
    if run_id is not None and (type(run_id) is not str or len(run_id) > MAX_TEXT_CHARS):
        _check_str("run_id", run_id)
    if response_id is not None and (type(response_id) is not str or len(response_id) > MAX_TEXT_CHARS):
        _check_str("response_id", response_id)
    if timestamp is None:
        ts = datetime.now(UTC)
    elif isinstance(timestamp, datetime):
        ts = to_utc(timestamp)
    else:
        raise _bad("timestamp", timestamp, "a datetime", TypeError)
    if id is None:
        id = str(_uuid7())
    elif type(id) is not str or not id or len(id) > MAX_ID_CHARS:
        _check_str("id", id, required=True, limit=MAX_ID_CHARS)
    record = UsageRecord(
        id, ts, provider, model, input_tokens, output_tokens, cache_read_tokens,
        cache_write_tokens, reasoning_tokens, cost, currency, user_id, session_id,
        customer_key, run_id, response_id, check_tags(tags) if tags else {},
        None if payload is None else check_json_object("payload", payload, MAX_PAYLOAD_BYTES),
    )
    if (cache_write_1h_tokens or input_audio_tokens or output_audio_tokens or input_image_tokens
            or output_image_tokens or service_tier is not None):
        _add_details(record, cache_write_1h_tokens, input_audio_tokens, output_audio_tokens,
                     input_image_tokens, output_image_tokens, service_tier)
    return record


def _add_details(record: UsageRecord, *values: Any) -> None:
    """The finer token counts and the service tier, off the hot path (most calls have none)."""
    *counts, tier = values
    for field, value in zip(DETAIL_TOKEN_FIELDS, counts, strict=True):
        setattr(record, field, _check_tokens(field, value))
    record.service_tier = _check_str("service_tier", tier)
    error = token_parts_error(record)
    if error:
        raise ValueError(error)
