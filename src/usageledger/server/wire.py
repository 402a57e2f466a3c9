"""The collector's wire (docs/collector.md): request bodies decoded with msgspec into the
shared records, and per-item validation that names the field and the bad value.

Decoding is strict JSON (no NaN/Infinity) for every endpoint, so what is stored can be
read back by every backend. A batch is decoded in one msgspec call when every item is a
well-formed :class:`UsageRecord` within the limits msgspec can check itself (lengths,
ranges, tag counts: :class:`_CheckedRecord`), the common case, as our own clients send
exactly that; only when that fails is the batch decoded item by item, so one bad item is
reported ``rejected`` with the message that names its field, and the others are still
stored.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from ..errors import UsageLedgerError
from ..schema.eventtime import uuid7_time
from ..schema.limits import (
    MAX_BATCH_ITEMS,
    MAX_COST,
    MAX_COST_DECIMALS,
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_PAYLOAD_BYTES,
    MAX_RUN_BYTES,
    MAX_SEQ,
    MAX_TAG_KEY_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    MAX_YEAR,
    MIN_YEAR,
    cost_error,
    json_depth,
    short,
    tags_error,
    text_error,
    token_parts_error,
)
from ..schema.records import (
    DETAIL_TOKEN_FIELDS,
    TOKEN_FIELDS,
    UsageRecord,
    encode,
    make_usage_record,
    to_utc,
)
from ..schema.runs import RunRecord
from ..storage.base import RunWrite

__all__ = [
    "BodyError",
    "Refused",
    "decode_body",
    "decode_track",
    "decode_run",
    "decode_run_patch",
    "decode_run_batch",
    "RunItem",
    "read_gzip",
    "MAX_TOKENS",
    "MAX_SEQ",
    "MAX_COST",
    "MAX_COST_DECIMALS",
    "MAX_BATCH_ITEMS",
]

# the limits live in usageledger.limits (shared with the client's record construction);
# the names above stay importable from here

#: payload keys taken as token counts in the legacy ``/track`` shape (``api_id``/``service_key``/``payload``), by record field
PAYLOAD_TOKEN_KEYS: dict[str, tuple[str, ...]] = {
    "input_tokens": ("input_tokens", "prompt_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens"),
    "cache_read_tokens": ("cache_read_tokens", "cache_read_input_tokens", "cached_tokens"),
    "cache_write_tokens": ("cache_write_tokens", "cache_creation_input_tokens"),
    "reasoning_tokens": ("reasoning_tokens",),
}
_STR_FIELDS = ("user_id", "session_id", "customer_key", "run_id", "response_id")


class BodyError(UsageLedgerError):
    """The request as a whole is unusable: answered with ``status`` and ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Refused:
    """An item of a ``/track`` batch that failed validation, and why. (Valid items are
    the records themselves: no wrapper object per record on the hot path.)"""

    id: str
    error: str


class _Batch(msgspec.Struct):
    tracked: list[UsageRecord]


_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Text = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT_CHARS)]
_OptText = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)] | None
_Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_Tags = Annotated[dict[Annotated[str, Meta(max_length=MAX_TAG_KEY_CHARS)],
                       Annotated[str, Meta(max_length=MAX_TAG_VALUE_CHARS)]], Meta(max_length=MAX_TAGS)]


class _CheckedRecord(UsageRecord):
    """A :class:`UsageRecord` whose decoding checks, in msgspec's C code, the limits a
    type can say: non-empty and bounded strings, token ranges, tag count and lengths
    (``schema.limits``; msgspec counts string lengths in code points, as ``len`` does).
    Only the field types differ from UsageRecord (same fields, order, defaults and slots),
    so a decoded instance becomes a plain UsageRecord by ``__class__`` assignment
    (:func:`_plain`). A batch that breaks one of these limits fails to decode as a whole
    and goes item by item, where :func:`_record_error` names the field and the value.
    (Batch of 1,000 records, in-process: the Python checks these replace cost 4.4 µs per
    record against 2.4 µs for the decode itself; docs/benchmarks.md.)"""

    id: _Id
    provider: _Text
    model: _Text
    input_tokens: _Tokens = 0
    output_tokens: _Tokens = 0
    cache_read_tokens: _Tokens = 0
    cache_write_tokens: _Tokens = 0
    reasoning_tokens: _Tokens = 0
    currency: _Text = "USD"
    user_id: _OptText = None
    session_id: _OptText = None
    customer_key: _OptText = None
    run_id: _OptText = None
    response_id: _OptText = None
    tags: _Tags = {}
    cache_write_1h_tokens: _Tokens = 0
    input_audio_tokens: _Tokens = 0
    output_audio_tokens: _Tokens = 0
    input_image_tokens: _Tokens = 0
    output_image_tokens: _Tokens = 0
    service_tier: _Text | None = None


class _CheckedBatch(msgspec.Struct):
    tracked: list[_CheckedRecord]


class _RawBatch(msgspec.Struct):
    tracked: list[msgspec.Raw]


class _RawRuns(msgspec.Struct):
    runs: list[msgspec.Raw]


_decode_fast = msgspec.json.Decoder(_CheckedBatch).decode
_decode_raw_batch = msgspec.json.Decoder(_RawBatch).decode
_decode_raw_runs = msgspec.json.Decoder(_RawRuns).decode
_decode_record = msgspec.json.Decoder(UsageRecord).decode
_decode_any = msgspec.json.Decoder().decode


def read_gzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing (413) as soon as the output passes ``limit``, so a
    gzip bomb costs at most ``limit`` bytes of memory."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BodyError(400, f"the body is not valid gzip: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise BodyError(413, f"the decompressed body is larger than the limit of {limit} bytes")
    if not d.eof:
        raise BodyError(400, "the gzip body is truncated")
    return out


def _unreadable(exc: BaseException, where: str) -> BodyError:
    """400 for JSON that is valid text but that no decoder here can hold: nesting near
    the interpreter's recursion limit, or a number no double can hold (``1e400``)."""
    if isinstance(exc, RecursionError):
        return BodyError(400, f"{where} nests JSON more than {MAX_JSON_DEPTH} levels deep "
                              f"(the limit for a payload or a run field)")
    if "out of range" in str(exc):
        return BodyError(400, f"{where} holds a number out of range (a JSON number must fit a "
                              f"double; send exact costs as strings): {exc}")
    return BodyError(400, f"{where} is not usable JSON: {exc}")


def _too_deep(where: str, value: Any, wrappers: int) -> None:
    """400 when ``value`` (decoded JSON) nests values deeper than MAX_JSON_DEPTH below its
    ``wrappers`` levels of envelope. One rule for every endpoint, checked right after
    decoding (before any recursive walk): the decoder's own limit depends on the stack
    it runs on, so it cannot be the rule."""
    if json_depth(value, MAX_JSON_DEPTH + wrappers + 1) > MAX_JSON_DEPTH + wrappers:
        raise BodyError(400, f"{where} nests JSON more than {MAX_JSON_DEPTH} levels deep "
                             f"(the limit for a payload or a run field)")


def _load(data: bytes | msgspec.Raw, where: str, wrappers: int) -> Any:
    try:
        obj = _decode_any(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _unreadable(exc, where) from None
    _too_deep(where, obj, wrappers)
    return obj


def decode_body(data: bytes) -> Any:
    """Any JSON value, or 400 naming what is wrong with the text."""
    try:
        return _decode_any(data)
    except RecursionError as exc:
        raise _unreadable(exc, "the body") from None
    except msgspec.DecodeError as exc:
        raise BodyError(400, f"malformed JSON: {exc}") from None


def _check_count(n: int, key: str) -> None:
    if n > MAX_BATCH_ITEMS:
        raise BodyError(413, f"a batch may hold at most {MAX_BATCH_ITEMS} items in \"{key}\", "
                             f"got {n}: send it in smaller batches")


def _shape_error(exc: msgspec.DecodeError, key: str) -> BodyError:
    if not isinstance(exc, msgspec.ValidationError):
        return BodyError(400, f"malformed JSON: {exc}")
    return BodyError(400, f'the body must be a JSON object {{"{key}": [item, ...]}}: {exc}')


# -- /track --------------------------------------------------------------------------------
def decode_track(data: bytes) -> list[UsageRecord | Refused]:
    """Decode a ``{"tracked": [...]}`` body into one valid record or :class:`Refused` per
    item, in order.

    Raises :class:`BodyError` (400) for malformed JSON or a body that is not a batch."""
    # a NUL inside a string is valid JSON that PostgreSQL cannot store: checked per item
    nul = b"\\u0000" in data
    try:
        batch = _decode_fast(data)
    except msgspec.ValidationError:
        pass  # some item is not a plain record within the limits: go item by item below
    except RecursionError as exc:
        raise _unreadable(exc, "the body") from None
    except msgspec.DecodeError as exc:
        raise BodyError(400, f"malformed JSON: {exc}") from None
    else:
        _check_count(len(batch.tracked), "tracked")
        return _plain(batch.tracked, nul)
    try:
        raw = _decode_raw_batch(data)
    except RecursionError as exc:
        raise _unreadable(exc, "the body") from None
    except msgspec.DecodeError as exc:
        raise _shape_error(exc, "tracked") from None
    _check_count(len(raw.tracked), "tracked")
    return [_decode_item(item, nul, i) for i, item in enumerate(raw.tracked)]


def _plain(records: list[Any], nul: bool) -> list[UsageRecord | Refused]:
    """The decoded :class:`_CheckedRecord` items as plain UsageRecords, in place, each
    checked for what msgspec did not check: the timestamp's years and zone, the cost's
    digits, the finer token counts against their wholes, the payload, NUL characters.
    One expression for the common, valid record; any other goes through
    :func:`_checked`, whose first failing check is among those (so its message is the
    one the item-by-item path gives)."""
    for i, r in enumerate(records):
        r.__class__ = UsageRecord
        ts, cost = r.timestamp, r.cost
        if (ts.tzinfo is not UTC or not MIN_YEAR <= ts.year <= MAX_YEAR
                or (cost is not None and not _plain_cost(cost)) or r.payload is not None or nul
                or r.cache_write_1h_tokens or r.input_audio_tokens or r.output_audio_tokens
                or r.input_image_tokens or r.output_image_tokens or r.service_tier is not None):
            records[i] = _checked(r, nul)
    return records


def _plain_cost(cost: Decimal) -> bool:
    """A cost :func:`cost_error` surely accepts, from its text (``as_tuple`` alone costs
    0.43 µs, ``cost_error`` 0.92 µs, this about 0.15 µs): written without an exponent
    (so its exponent is at most 0), a digit first (finite, not negative), at most 19
    characters (so at most 17 decimals and 19 digits), and at most MAX_COST. False only
    means "ask cost_error"."""
    text = str(cost)
    return len(text) <= 19 and "E" not in text and text[0] in _DIGITS and cost <= MAX_COST


_DIGITS = frozenset("0123456789")


def _decode_item(raw: msgspec.Raw, nul: bool, index: int) -> UsageRecord | Refused:
    try:
        return _checked(_decode_record(raw), nul)
    except msgspec.ValidationError:
        pass  # not a complete record: try the lenient shapes below for a precise error
    obj = _load(raw, f"item {index} of \"tracked\"", 1)
    if not isinstance(obj, dict):
        return Refused("", f"an item must be a JSON object, got {_short(obj)}")
    id_ = obj.get("id")
    if not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_CHARS:
        return Refused(
            id_ if isinstance(id_, str) and len(id_) <= MAX_ID_CHARS else "",
            f"id must be a non-empty string of at most {MAX_ID_CHARS} characters "
            f"(ids make delivery exactly-once), got {_short(id_)}",
        )
    try:
        record = record_from_dict(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        return Refused(id_, str(exc))
    return _checked(record, nul)


def _is_alias(obj: dict[str, Any]) -> bool:
    return "provider" not in obj and "model" not in obj and ("api_id" in obj or "service_key" in obj)


def record_from_dict(obj: dict[str, Any]) -> UsageRecord:
    """Build a record from a dict in our shape or in the legacy ``/track`` shape (``api_id``/``service_key``/``payload``)
    (``api_id``/``service_key``/``payload``), with the core's validation and messages.
    A missing ``timestamp`` is the time in a UUIDv7 ``id``, else the time of receipt."""
    kw: dict[str, Any] = {"provider": obj.get("provider"), "model": obj.get("model"),
                          "tags": obj.get("tags")}
    payload = obj.get("payload")
    if _is_alias(obj):
        kw.update(_from_alias(obj, payload))
    for field in (*TOKEN_FIELDS, *DETAIL_TOKEN_FIELDS, *_STR_FIELDS, "service_tier", "cost", "currency"):
        if obj.get(field) is not None:
            kw[field] = obj[field]
    if payload is not None:
        kw["payload"] = payload
    kw["timestamp"] = _timestamp(obj.get("timestamp"), obj["id"])
    return make_usage_record(id=obj["id"], **kw)


def _from_alias(obj: dict[str, Any], payload: Any) -> dict[str, Any]:
    """provider = api_id, model = service_key ("provider::model" is split, the api_id then
    kept as tag ``api_id``); token counts and cost from the payload."""
    api_id, service_key = obj.get("api_id"), obj.get("service_key")
    if api_id is None and not (isinstance(service_key, str) and "::" in service_key):
        raise ValueError("api_id (the provider) is required in the /track item shape, got None")
    if service_key is None:
        raise ValueError("service_key (the model) is required in the /track item shape, got None")
    provider, model = api_id, service_key
    tags = obj.get("tags")
    if isinstance(service_key, str) and "::" in service_key:
        provider, model = service_key.split("::", 1)
        if isinstance(api_id, str) and api_id and api_id != provider:
            tags = {**tags, "api_id": api_id} if isinstance(tags, dict) else {"api_id": api_id}
    out: dict[str, Any] = {"provider": provider, "model": model, "tags": tags}
    if isinstance(payload, dict):
        for field, keys in PAYLOAD_TOKEN_KEYS.items():
            key = next((k for k in keys if k in payload), None)
            if key is not None:
                out[field] = _token(f"payload.{key}", payload[key])
        if payload.get("cost") is not None:
            out["cost"] = payload["cost"]
    return out


def _token(field: str, value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{field} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return value


def _timestamp(value: Any, id_: str) -> datetime:
    if value is None:
        # the event time, not the receipt time: a UUIDv7 id carries when it was made
        return uuid7_time(id_) or datetime.now(UTC)
    if not isinstance(value, str):
        raise TypeError(f"timestamp must be an ISO 8601 string, got {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"timestamp must be an ISO 8601 datetime, got {value!r}") from None


def _checked(r: UsageRecord, nul: bool) -> UsageRecord | Refused:
    """What msgspec's types do not say: ranges, lengths, non-empty strings, UTC, exact
    cost."""
    error = _record_error(r, nul)
    if error is None:
        return r
    # an id too long to be one of ours is not echoed back (the answer stays small)
    return Refused(r.id if len(r.id) <= MAX_ID_CHARS else "", error)


def _record_error(r: UsageRecord, nul: bool) -> str | None:
    # one boolean expression for the common, valid case; the messages only when it fails
    if not (r.id and r.provider and r.model and r.currency
            and len(r.id) <= MAX_ID_CHARS and len(r.provider) <= MAX_TEXT_CHARS
            and len(r.model) <= MAX_TEXT_CHARS and len(r.currency) <= MAX_TEXT_CHARS
            and 0 <= r.input_tokens <= MAX_TOKENS and 0 <= r.output_tokens <= MAX_TOKENS
            and 0 <= r.cache_read_tokens <= MAX_TOKENS and 0 <= r.cache_write_tokens <= MAX_TOKENS
            and 0 <= r.reasoning_tokens <= MAX_TOKENS):
        for field in ("id", "provider", "model", "currency"):
            if not getattr(r, field):
                extra = " (ids make delivery exactly-once)" if field == "id" else ""
                return f"{field} must be a non-empty string{extra}, got ''"
            error = text_error(field, getattr(r, field), MAX_ID_CHARS if field == "id" else MAX_TEXT_CHARS)
            if error:
                return error
        for field in TOKEN_FIELDS:
            v = getattr(r, field)
            if not 0 <= v <= MAX_TOKENS:
                return f"{field} must be an integer from 0 to {MAX_TOKENS}, got {v!r}"
    for field in _STR_FIELDS:
        v = getattr(r, field)
        if v is not None and len(v) > MAX_TEXT_CHARS:
            return text_error(field, v)
    if ((r.cache_write_1h_tokens or r.input_audio_tokens or r.output_audio_tokens or r.input_image_tokens
         or r.output_image_tokens or r.service_tier is not None) and (error := token_parts_error(r))):
        return error
    if r.tags and (error := tags_error(r.tags)):
        return error
    if r.payload is not None and (error := _payload_error(r)):
        return error
    cost = r.cost
    if cost is not None and (error := cost_error(cost)):
        return error
    ts = r.timestamp
    if not MIN_YEAR <= ts.year <= MAX_YEAR:
        return f"timestamp must be between {MIN_YEAR} and {MAX_YEAR}, got {ts.isoformat()!r}"
    if ts.tzinfo is not UTC:
        r.timestamp = to_utc(ts)
    if nul:
        where = _nul_field(r)
        if where:
            return f"{where} contains a NUL character (\\u0000), which storage cannot hold"
    return None


def _payload_error(r: UsageRecord) -> str | None:
    payload = r.payload
    _too_deep(f"the item with id {_short(r.id)}", payload, 0)
    size = len(encode(payload))
    if size > MAX_PAYLOAD_BYTES:
        return f"payload must encode to at most {MAX_PAYLOAD_BYTES} bytes of JSON, got {size}"
    return None


def _nul_field(r: UsageRecord) -> str | None:
    for field in ("id", "provider", "model", "currency", *_STR_FIELDS, "service_tier"):
        v = getattr(r, field)
        if v is not None and "\x00" in v:
            return field
    for k, v in r.tags.items():
        if "\x00" in k or "\x00" in v:
            return "tags"
    if r.payload is not None and _has_nul(r.payload):
        return "payload"
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _short(value: Any) -> str:
    return short(value, 80)


# -- runs ------------------------------------------------------------------------------------
#: types of the known run fields: the client's RunRecord (one schema for client, wire and
#: storage; storage orders runs by its ``start_time``)
_RUN_TYPES: dict[str, Any] = {
    f.name: f.type for f in msgspec.structs.fields(RunRecord) if f.name != "run_id"
}


def _run_fields(obj: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    fields = {k: v for k, v in obj.items() if k not in drop}
    for k, v in fields.items():
        typ = _RUN_TYPES.get(k)
        if typ is None:
            continue  # other fields are kept as given
        if k == "metrics_json" and isinstance(v, str):
            try:  # the original client stored it as a string holding a JSON object
                v = fields[k] = _decode_any(v)
            except (msgspec.DecodeError, RecursionError):
                raise ValueError(f"metrics_json must be a JSON object, got {_short(v)}") from None
            _too_deep("metrics_json", v, 0)
        try:
            msgspec.convert(v, typ)
        except msgspec.ValidationError:
            raise ValueError(f"run field {k} must be {_type_name(typ)}, got {_short(v)}") from None
    if _has_nul(fields):
        raise ValueError("run fields contain a NUL character (\\u0000), which storage cannot hold")
    size = len(encode(fields))
    if size > MAX_RUN_BYTES:
        raise ValueError(f"run fields must encode to at most {MAX_RUN_BYTES} bytes of JSON, got {size}")
    return fields

def _type_name(typ: Any) -> str:
    return " or ".join(getattr(t, "__name__", str(t)) for t in getattr(typ, "__args__", (typ,)))


def _run_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"run_id must be a non-empty string, got {_short(value)}")
    if "\x00" in value:
        raise ValueError("run_id contains a NUL character (\\u0000)")
    error = text_error("run_id", value)
    if error:
        raise ValueError(error)
    return value


def _seq(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise ValueError(f"seq must be an integer from 0 to {MAX_SEQ}, got {_short(value)}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {_short(value)}")
    return value


def decode_run(data: bytes) -> tuple[str, int | None, dict[str, Any]]:
    """``POST /runs`` body: (run_id, seq or None, fields). ValueError names the field."""
    obj = _object(_load(data, "the body", 1), "the run")
    return _run_id(obj.get("run_id")), _seq(obj.get("seq")), _run_fields(obj, ("run_id", "seq"))


def decode_run_patch(data: bytes, run_id: str) -> tuple[int | None, dict[str, Any]]:
    """``PATCH /runs/{run_id}`` body: (seq or None, fields). A ``run_id`` in the body must
    match the path."""
    obj = _object(_load(data, "the body", 1), "the update")
    if "run_id" in obj and obj["run_id"] != run_id:
        raise ValueError(f"run_id in the body ({_short(obj['run_id'])}) differs from the path ({run_id!r})")
    return _seq(obj.get("seq")), _run_fields(obj, ("run_id", "seq"))


@dataclass(slots=True)
class RunItem:
    """One write of a ``/runs/batch`` body; ``seq`` None means "on top of what is stored"."""

    id: str
    run_id: str = ""
    seq: int | None = None
    create: bool = True
    fields: dict[str, Any] | None = None
    error: str | None = None

    def write(self, seq: int) -> RunWrite:
        return RunWrite(self.run_id, self.fields or {}, seq, self.create)


def decode_run_batch(data: bytes) -> list[RunItem]:
    """``{"runs": [{"id", "run_id", "seq", "create", ...fields}, ...]}`` -> RunItems; an
    item that fails validation carries its error (the others still apply)."""
    try:
        raw = _decode_raw_runs(data)
    except RecursionError as exc:
        raise _unreadable(exc, "the body") from None
    except msgspec.DecodeError as exc:
        raise _shape_error(exc, "runs") from None
    _check_count(len(raw.runs), "runs")
    items = []
    for i, r in enumerate(raw.runs):
        obj = _load(r, f"item {i} of \"runs\"", 1)
        if not isinstance(obj, dict):
            items.append(RunItem("", error=f"a run write must be a JSON object, got {_short(obj)}"))
            continue
        id_ = obj.get("id")
        if not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_CHARS:
            items.append(RunItem(id_ if isinstance(id_, str) and len(id_) <= MAX_ID_CHARS else "",
                                 error=f"id (the write's id) must be a non-empty string of at most "
                                       f"{MAX_ID_CHARS} characters, got {_short(id_)}"))
            continue
        try:
            create = obj.get("create", True)
            if type(create) is not bool:
                raise ValueError(f"create must be true or false, got {_short(create)}")
            items.append(RunItem(
                id_, _run_id(obj.get("run_id")), _seq(obj.get("seq")), create,
                _run_fields(obj, ("id", "run_id", "seq", "create")),
            ))
        except ValueError as exc:
            items.append(RunItem(id_, error=str(exc)))
    return items
