"""The ``/track`` wire's one-call path (the limits msgspec can check, checked while
decoding, the others in one expression per record) answers exactly what the item-by-item
path answers: the same records, the same refusals with the same messages."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

import msgspec
import pytest

from usageledger.schema import limits
from usageledger.schema.records import DETAIL_TOKEN_FIELDS, TOKEN_FIELDS, UsageRecord, decode_usage
from usageledger.server import wire
from usageledger.server.wire import BodyError, Refused, decode_track

TS = "2025-06-01T12:00:00+00:00"
MAXT = limits.MAX_TOKENS
TEXT = limits.MAX_TEXT_CHARS


def item(n: int = 0, **kw: object) -> dict:
    return {"id": f"id-{n}", "timestamp": TS, "provider": "openai", "model": "gpt-4o",
            "input_tokens": 10, "output_tokens": 5, "cost": "0.00012", **kw}


def body(*items: object) -> bytes:
    return msgspec.json.encode({"tracked": list(items)})


#: an item no record decoder takes: its batch goes item by item
BROKEN = {"id": "broken", "timestamp": TS, "model": "m"}

#: items just inside a limit (stored) ...
INSIDE = [
    ("id of 128 characters", item(id="i" * limits.MAX_ID_CHARS)),
    ("id of 128 non-ASCII characters", item(id="é" * limits.MAX_ID_CHARS)),
    ("provider of 256 characters", item(provider="p" * TEXT)),
    ("model of 256 astral characters", item(model="😀" * TEXT)),
    ("currency of 256 characters", item(currency="c" * TEXT)),
    *[(f"{f} at the limit", item(**{f: "s" * TEXT})) for f in wire._STR_FIELDS],
    *[(f"{f} at the limit", item(**{f: MAXT})) for f in TOKEN_FIELDS],
    ("zero tokens", item(input_tokens=0, output_tokens=0)),
    ("1-hour cache writes equal to the cache writes",
     item(cache_write_tokens=7, cache_write_1h_tokens=7)),
    ("audio and image input within the input", item(input_tokens=10, input_audio_tokens=4,
                                                    input_image_tokens=6)),
    ("service tier of 256 characters", item(service_tier="t" * TEXT)),
    ("64 tags", item(tags={str(i): "v" for i in range(limits.MAX_TAGS)})),
    ("tag key of 128 characters", item(tags={"k" * limits.MAX_TAG_KEY_CHARS: "v"})),
    ("tag value of 1024 characters", item(tags={"k": "v" * limits.MAX_TAG_VALUE_CHARS})),
    ("year 1970", item(timestamp="1970-01-01T00:00:00Z")),
    ("year 9998", item(timestamp="9998-12-31T23:59:59Z")),
    ("naive timestamp (taken as UTC)", item(timestamp="2025-06-01T12:00:00")),
    ("timestamp at +02:00 (stored in UTC)", item(timestamp="2025-06-01T14:00:00+02:00")),
    ("no cost", item(cost=None)),
    ("cost as a JSON number", item(cost=0.5)),
    ("cost with 18 decimals", item(cost="0.000000000000000001")),
    ("cost with trailing zeros", item(cost="0.10000000000000000000000")),
    ("cost 1E+9", item(cost="1E+9")),
    ("cost 1000000000", item(cost="1000000000")),
    ("cost -0", item(cost="-0")),
    ("cost 0E-100000000", item(cost="0E-100000000")),
    ("small payload", item(payload={"a": [1, 2, {"b": "c"}]})),
]

#: ... and just outside one (refused, naming the field)
OUTSIDE = [
    ("id of 129 characters", item(id="i" * (limits.MAX_ID_CHARS + 1))),
    ("id of 129 astral characters", item(id="😀" * (limits.MAX_ID_CHARS + 1))),
    ("empty id", item(id="")),
    ("empty provider", item(provider="")),
    ("empty model", item(model="")),
    ("empty currency", item(currency="")),
    ("provider of 257 characters", item(provider="p" * (TEXT + 1))),
    ("model of 257 characters", item(model="m" * (TEXT + 1))),
    ("currency of 257 characters", item(currency="c" * (TEXT + 1))),
    *[(f"{f} past the limit", item(**{f: "s" * (TEXT + 1)})) for f in wire._STR_FIELDS],
    *[(f"{f} past the limit", item(**{f: MAXT + 1})) for f in TOKEN_FIELDS],
    *[(f"{f} negative", item(**{f: -1})) for f in TOKEN_FIELDS],
    *[(f"{f} negative", item(**{f: -1})) for f in DETAIL_TOKEN_FIELDS],
    *[(f"{f} past the limit", item(input_tokens=MAXT, output_tokens=MAXT, cache_write_tokens=MAXT,
                                   **{f: MAXT + 1})) for f in DETAIL_TOKEN_FIELDS],
    ("1-hour cache writes above the cache writes", item(cache_write_tokens=7, cache_write_1h_tokens=8)),
    ("image output above the output", item(output_tokens=5, output_image_tokens=6)),
    ("empty service tier", item(service_tier="")),
    ("service tier of 257 characters", item(service_tier="t" * (TEXT + 1))),
    ("65 tags", item(tags={str(i): "v" for i in range(limits.MAX_TAGS + 1)})),
    ("tag key of 129 characters", item(tags={"k" * (limits.MAX_TAG_KEY_CHARS + 1): "v"})),
    ("tag value of 1025 characters", item(tags={"k": "v" * (limits.MAX_TAG_VALUE_CHARS + 1)})),
    ("year 1969", item(timestamp="1969-12-31T23:59:59Z")),
    ("year 9999", item(timestamp="9999-01-01T00:00:00Z")),
    ("cost with 19 decimals", item(cost="0.0000000000000000001")),
    ("cost 1000000001", item(cost="1000000001")),
    ("cost 1e-100000000", item(cost="1e-100000000")),
    ("cost written with 51 digits", item(cost="1." + "0" * 50)),
    ("cost 1e400", item(cost="1e400")),
    ("negative cost", item(cost="-0.5")),
    ("cost NaN", item(cost="NaN")),
    ("cost Infinity", item(cost="Infinity")),
    ("payload nested 33 deep", item(payload=msgspec.json.decode('{"a":' * 33 + "1" + "}" * 33))),
    ("payload of 100 KiB", item(payload={"text": "z" * 100_000})),
    ("NUL in the model", item(model="gpt\x00")),
    ("NUL in a tag value", item(tags={"k": "v\x00"})),
    ("NUL in the payload", item(payload={"k": ["\x00"]})),
]


def _same(fast: UsageRecord | Refused, slow: UsageRecord | Refused) -> None:
    assert type(fast) is type(slow)
    if type(fast) is Refused:
        assert (fast.id, fast.error) == (slow.id, slow.error)
    else:
        assert msgspec.structs.asdict(fast) == msgspec.structs.asdict(slow)


def _decoded(data: bytes) -> list[UsageRecord | Refused] | tuple[int, str]:
    try:
        return decode_track(data)
    except BodyError as exc:  # a payload too deep refuses the whole body, on either path
        return exc.status, exc.message


@pytest.mark.parametrize("name,it", INSIDE + OUTSIDE, ids=[n for n, _ in INSIDE + OUTSIDE])
def test_the_one_call_path_answers_what_the_item_by_item_path_answers(name, it):
    neighbours = [item(1), it, item(2)]
    fast = _decoded(body(*neighbours))
    slow = _decoded(body(*neighbours, BROKEN))
    if isinstance(fast, tuple):
        assert fast == slow and fast[0] == 400 and "nests JSON" in fast[1], name
        return
    assert len(fast) == 3 and len(slow) == 4 and type(slow[3]) is Refused
    for f, s in zip(fast, slow[:3], strict=False):
        _same(f, s)
    assert type(fast[0]) is UsageRecord and type(fast[2]) is UsageRecord
    inside = any(it is i for _, i in INSIDE)
    if inside:
        assert type(fast[1]) is UsageRecord, (name, fast[1])
        assert fast[1].timestamp.tzinfo is UTC
    else:
        assert type(fast[1]) is Refused, name
        assert fast[1].error, name


def test_refusals_name_the_field_and_the_limit():
    by_name = dict(OUTSIDE)
    answers = {name: decode_track(body(by_name[name]))[0].error for name in (
        "model of 257 characters", "input_tokens past the limit", "65 tags", "year 1969",
        "cost with 19 decimals", "empty service tier")}
    assert answers["model of 257 characters"].startswith("model must be at most 256 characters, got 257")
    assert answers["input_tokens past the limit"] == (
        f"input_tokens must be an integer from 0 to {MAXT}, got {MAXT + 1}")
    assert answers["65 tags"] == "tags may hold at most 64 entries, got 65"
    assert answers["year 1969"].startswith("timestamp must be between 1970 and 9998")
    assert answers["cost with 19 decimals"].startswith("cost must have at most 18 decimals")
    assert answers["empty service tier"].startswith("service_tier must be a non-empty string")


def test_decoded_records_are_plain_usage_records_equal_to_the_shared_decoder():
    items = [item(i, user_id=f"u{i}", tags={"team": "t"}, timestamp=TS) for i in range(50)]
    out = decode_track(body(*items))
    assert all(type(r) is UsageRecord for r in out)
    assert out == [decode_usage(msgspec.json.encode(i)) for i in items]


def test_the_checked_record_differs_from_usage_record_only_in_its_types():
    # the one-call path turns each decoded record into a UsageRecord by __class__
    # assignment: same fields, order, defaults and slots, and nothing of its own
    fields = msgspec.structs.fields(UsageRecord)
    checked = msgspec.structs.fields(wire._CheckedRecord)
    assert [(f.name, f.encode_name, f.default, f.default_factory) for f in checked] == [
        (f.name, f.encode_name, f.default, f.default_factory) for f in fields]
    def config(cls: type) -> dict:
        c = cls.__struct_config__
        return {k: getattr(c, k) for k in dir(c) if not k.startswith("_")}

    assert config(wire._CheckedRecord) == config(UsageRecord)
    assert wire._CheckedRecord.__basicsize__ == UsageRecord.__basicsize__
    assert set(vars(wire._CheckedRecord)) - set(vars(UsageRecord)) <= {"__doc__", "__annotations__", "__module__"}


COSTS = ["0", "0.0", "1", "0.00012", "0.5", "123456789.123456789", "999999999.99999999",
         "1000000000", "1000000000.0", "1000000000.000000001", "1000000001", "0.000000000000000001",
         "0.0000000000000000001", "0.10000000000000000000000", "1E+9", "1E+10", "1E-7", "-0",
         "-0.0", "-1", "NaN", "sNaN", "Infinity", "-Infinity", "0E-30", "0E+400", "1e400",
         "12345678901234567", "0.12345678901234567", "0.123456789012345678", "99.99", "7.5E-7",
         "1." + "0" * 50, "0E-100000000", "1e-100000000", "0.1234567890123456789",
         "1.123456789012345678", "0.00000000000000000010"]


@pytest.mark.parametrize("text", COSTS)
def test_the_quick_cost_test_accepts_only_what_cost_error_accepts(text):
    cost = Decimal(text)
    if wire._plain_cost(cost):
        assert limits.cost_error(cost) is None, text


def test_the_quick_cost_test_takes_the_common_costs():
    # (below 1E-6, Decimal writes an exponent: those costs go through cost_error)
    for text in ("0", "0.00012", "0.5", "123.456", "999999999.99999999", "1000000000", "0.000001"):
        assert wire._plain_cost(Decimal(text)), text
    assert wire._plain_cost(Decimal(repr(0.1 + 0.2)))  # a float's shortest repr: 17 digits



def test_every_record_field_is_checked_on_the_one_call_path():
    # a new UsageRecord field is inherited by _CheckedRecord unconstrained: its limits must
    # then be given a type there, or be checked in _plain's expression (and listed here)
    by_type = {name for name in wire._CheckedRecord.__annotations__}
    in_plain = {"timestamp", "cost", "payload"}  # years and zone; digits; depth and size
    assert by_type | in_plain == set(UsageRecord.__struct_fields__), (
        set(UsageRecord.__struct_fields__) - by_type - in_plain)
