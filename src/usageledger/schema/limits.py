"""Limits on what a record, a run write and a request may hold: one home for the client's
record construction (``make_usage_record``, ``PersistentDelivery.enqueue``) and the
collector's wire reader, so a local store never accepts what the collector refuses.

Every bound here keeps one authenticated request (at most ``DEFAULT_MAX_BODY_BYTES``)
from costing the collector more than a small multiple of its size, and keeps every
stored value readable by every backend and every later page of answers small:

- strings are capped in characters (``MAX_ID_CHARS``, ``MAX_TEXT_CHARS``, tags);
- JSON objects (``payload``, run fields) are capped in nesting depth and encoded bytes;
- costs are capped in digits and exponent before any arithmetic, because ``Decimal``
  arithmetic on ``1e-100000000`` underflows silently (and ``1e400`` is no cost);
- batches are capped in items, answers in bytes.

The checks return an error message (naming the field and a shortened value) or None;
callers raise or refuse with it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

__all__ = [
    "MAX_TOKENS", "MAX_COST", "MAX_COST_DECIMALS", "MAX_COST_DIGITS", "MAX_SEQ",
    "MIN_YEAR", "MAX_YEAR", "MAX_ID_CHARS", "MAX_TEXT_CHARS", "MAX_TAGS",
    "MAX_TAG_KEY_CHARS", "MAX_TAG_VALUE_CHARS", "MAX_JSON_DEPTH", "MAX_PAYLOAD_BYTES",
    "MAX_RUN_BYTES", "MAX_BATCH_ITEMS", "MAX_ANSWER_BYTES", "MAX_LOG_VALUE_CHARS",
    "cost_error", "token_parts_error", "text_error", "tags_error", "json_depth", "depth_error", "short",
]

#: per-call token counts above this are refused: sums of millions of them must still fit
#: the 64-bit integers of SQLite and PostgreSQL
MAX_TOKENS = 10**12
#: a cost above this (in the record's currency) is refused as an obvious unit mistake
MAX_COST = Decimal(10**9)
#: more decimals than this cannot be summed exactly in Decimal's default 28 digits
MAX_COST_DECIMALS = 18
#: digits a cost may be written with (trailing zeros included): 10 before the point, 18
#: after, and room for zeros; checked before any arithmetic on the value
MAX_COST_DIGITS = 40
#: seq is stored as a signed 64-bit integer; a client's seq stays far below its limit so
#: that seq-less updates (stored seq + 1) can never overflow it
MAX_SEQ = 2**62
#: timestamps outside these years cannot be bucketed by day in every backend
MIN_YEAR, MAX_YEAR = 1970, 9998

#: record and write ids (ours are 36-character UUIDv7 strings)
MAX_ID_CHARS = 128
#: provider, model, currency, user_id, session_id, customer_key, run_id, response_id
MAX_TEXT_CHARS = 256
MAX_TAGS = 64
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 1024
#: nesting of a record's payload or a run's fields (a scalar is depth 0, ``{}`` depth 1);
#: msgspec itself gives up near 1,000, and a value that decodes here must decode again
#: when it is read back from storage inside a deeper call stack
MAX_JSON_DEPTH = 32
#: a record's payload, JSON-encoded
MAX_PAYLOAD_BYTES = 64 * 1024
#: one run write's fields, JSON-encoded (runs carry summaries and error details)
MAX_RUN_BYTES = 1024 * 1024
#: items of one ``/track`` or ``/runs/batch`` body (clients send 100 by default); the
#: answer holds one short result per item, so this caps the answer too
MAX_BATCH_ITEMS = 10_000
#: a page of ``/usage`` or ``/runs`` stops before this many bytes (``next_offset`` goes on)
MAX_ANSWER_BYTES = 8 * 1024 * 1024
#: a value quoted in a log line or an error message
MAX_LOG_VALUE_CHARS = 120


def short(value: Any, limit: int = MAX_LOG_VALUE_CHARS) -> str:
    """``repr(value)`` escaped (a newline is ``\\n``: no forged log lines) and shortened to
    about ``limit`` characters, saying how long it was. Long strings are cut before
    ``repr`` so a 7 MiB value costs nothing to quote."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4,300 digits has no repr
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_error(field: str, value: str, limit: int = MAX_TEXT_CHARS) -> str | None:
    if len(value) > limit:
        return f"{field} must be at most {limit} characters, got {len(value)}: {short(value, 40)}"
    return None


def tags_error(tags: dict[str, str]) -> str | None:
    """Count and lengths of tags (their types are checked by the caller)."""
    if len(tags) > MAX_TAGS:
        return f"tags may hold at most {MAX_TAGS} entries, got {len(tags)}"
    for k, v in tags.items():
        if len(k) > MAX_TAG_KEY_CHARS:
            return f"tag keys must be at most {MAX_TAG_KEY_CHARS} characters, got {len(k)}: {short(k, 40)}"
        if len(v) > MAX_TAG_VALUE_CHARS:
            return (f"tags[{short(k, 40)}] must be at most {MAX_TAG_VALUE_CHARS} characters, "
                    f"got {len(v)}")
    return None


def cost_error(cost: Decimal) -> str | None:
    """Why ``cost`` cannot be stored and summed exactly, or None. Digits and exponent are
    bounded from the tuple first: ``scaleb`` and comparisons then stay exact."""
    if not cost.is_finite() or cost < 0:
        return f"cost must be a finite number from 0 to {MAX_COST}, got {short(str(cost))}"
    _, digits, exponent = cost.as_tuple()
    assert isinstance(exponent, int)  # finite
    if len(digits) > MAX_COST_DIGITS:
        return f"cost must be written with at most {MAX_COST_DIGITS} digits, got {len(digits)}"
    if exponent > 0 and any(digits) and len(digits) + exponent > 10:
        return f"cost must be a finite number from 0 to {MAX_COST}, got {short(str(cost))}"
    # zeros at the end of the digits are not decimals: 0.10 has one
    end = len(digits)
    while end > 1 and exponent < 0 and digits[end - 1] == 0:
        end -= 1
        exponent += 1
    if exponent < -MAX_COST_DECIMALS and any(digits):
        return f"cost must have at most {MAX_COST_DECIMALS} decimals, got {short(str(cost))}"
    if cost > MAX_COST:
        return f"cost must be a finite number from 0 to {MAX_COST}, got {short(str(cost))}"
    return None


#: (part, whole, ...): the finer token counts of a record and the count each is part of
TOKEN_PARTS = (
    (("cache_write_1h_tokens",), "cache_write_tokens"),
    (("input_audio_tokens", "input_image_tokens"), "input_tokens"),
    (("output_audio_tokens", "output_image_tokens"), "output_tokens"),
)


def token_parts_error(record: Any) -> str | None:
    """Why the finer token counts of ``record`` (a UsageRecord) cannot be priced, or None:
    each from 0 to ``MAX_TOKENS``, and the parts of a count no larger than that count (a
    part larger than its whole would be charged at two prices), ``service_tier`` short."""
    for parts, whole in TOKEN_PARTS:
        total = 0
        for field in parts:
            v = getattr(record, field)
            if type(v) is not int or not 0 <= v <= MAX_TOKENS:
                return f"{field} must be an integer from 0 to {MAX_TOKENS}, got {short(v)}"
            total += v
        if total > getattr(record, whole):
            named = " + ".join(f"{f} ({getattr(record, f)})" for f in parts if getattr(record, f))
            return (f"{named} must be at most {whole} ({getattr(record, whole)}): "
                    f"they are the part of it priced at their own rate")
    tier = record.service_tier
    if tier is not None and (type(tier) is not str or not tier or len(tier) > MAX_TEXT_CHARS):
        return f"service_tier must be a non-empty string of at most {MAX_TEXT_CHARS} characters, got {short(tier)}"
    return None


def json_depth(value: Any, stop: int = MAX_JSON_DEPTH + 1) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), counted without recursion and
    without looking deeper than ``stop``."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    level: list[Any] = [value]
    while level and deepest < stop:
        deepest += 1
        nxt: list[Any] = []
        for v in level:
            for child in (v.values() if isinstance(v, dict) else v):
                if isinstance(child, dict | list):
                    nxt.append(child)
        level = nxt
    return deepest


def depth_error(field: str, value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    if json_depth(value, limit + 1) > limit:
        return f"{field} is nested more than {limit} levels deep"
    return None
