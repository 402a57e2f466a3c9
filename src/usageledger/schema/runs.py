"""The run schema: ``RunRecord``, ``RunEvent``, ``APIPayload`` and helpers.

It lives beside the usage schema (``records.py``) because the collector and the storage
read it as much as the client: ``usageledger.telemetry.models`` re-exports the same
objects for the client's code.

One schema for client, journal, NDJSON, SQLite and collector: a run write on every wire
is the flat JSON object of a :class:`RunRecord` plus ``id`` (a fresh UUIDv7 per write),
``seq`` (the run's write counter: newer writes win) and ``create`` (always true: every
write carries the full state, so a lost or reordered write is healed by any later one).

``metrics_json`` and an event's ``payload`` are JSON *objects* everywhere (a string
where a reader expects an object is how data got lost before); strings holding a JSON
object are accepted on input and parsed.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import msgspec

from .records import check_json_object, encode

__all__ = [
    "SCHEMA_VERSION",
    "RUN_STATUSES",
    "RunRecord",
    "RunEvent",
    "APIPayload",
    "generate_run_id",
    "get_iso8601_timestamp",
    "calculate_duration_ms",
    "check_run_fields",
    "SETTABLE_FIELDS",
]

#: v3 of the original client's agent_runs schema (insight_id, product_family, subdomain), plus error_details
SCHEMA_VERSION = 3
RUN_STATUSES = ("running", "success", "failed", "partial", "timeout", "cancelled")
#: a run id longer than this is refused (it names files and primary keys)
MAX_RUN_ID_LENGTH = 255


class RunRecord(msgspec.Struct):
    """One agent execution run; the columns of the SQLite ``agent_runs`` table.

    Timestamps are ISO 8601 strings in UTC (``2026-01-02T03:04:05.678901+00:00``)."""

    run_id: str
    agent_name: str
    job_type: str
    trigger_type: str = "cli"
    start_time: str = ""
    schema_version: int = SCHEMA_VERSION
    agent_owner: str | None = None
    end_time: str | None = None
    status: str = "running"
    items_discovered: int = 0
    items_succeeded: int = 0
    items_failed: int = 0
    duration_ms: int | None = None
    input_summary: str | None = None
    output_summary: str | None = None
    error_summary: str | None = None
    error_details: str | None = None
    metrics_json: dict[str, Any] | None = None
    insight_id: str | None = None
    product: str | None = None
    platform: str | None = None
    product_family: str | None = None
    subdomain: str | None = None
    git_repo: str | None = None
    git_branch: str | None = None
    git_run_tag: str | None = None
    host: str | None = None
    created_at: str | None = None
    updated_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``record_type: "run"`` (the NDJSON line's shape)."""
        return {"record_type": "run", **msgspec.structs.asdict(self)}

    def to_json(self) -> str:
        return encode(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Build from a dict (an NDJSON line, a database row, an API body); keys that are
        not fields (``record_type``, ``seq``, ``id``...) are ignored; bad types raise
        ``TypeError`` naming the field."""
        if not isinstance(data, dict):
            raise TypeError(f"RunRecord.from_dict needs a dict, got {data!r}")
        known = {k: v for k, v in data.items() if k in _RUN_FIELDS}
        if isinstance(known.get("metrics_json"), str):
            known["metrics_json"] = _json_object("metrics_json", known["metrics_json"])
        return _convert(known, cls)


class RunWrite(RunRecord, kw_only=True):
    """One write of a run as every destination receives it (journal item of kind
    ``records.KIND_RUN``): the full state, the write's ``id`` and the run's ``seq``."""

    id: str = ""
    seq: int = 0
    create: bool = True


class RunEvent(msgspec.Struct):
    """One event inside a run; written to the NDJSON files only."""

    run_id: str
    event_type: str
    timestamp: str
    payload: dict[str, Any] | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"record_type": "event", **msgspec.structs.asdict(self)}

    def to_json(self) -> str:
        return encode(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunEvent:
        """Accepts the original client's ``payload_json`` (a JSON string) as well as ``payload``."""
        if not isinstance(data, dict):
            raise TypeError(f"RunEvent.from_dict needs a dict, got {data!r}")
        known = {k: v for k, v in data.items() if k in _EVENT_FIELDS}
        if "payload" not in known and data.get("payload_json") is not None:
            known["payload"] = data["payload_json"]
        if isinstance(known.get("payload"), str):
            known["payload"] = _json_object("payload", known["payload"])
        if known.get("id") is not None:
            known["id"] = str(known["id"])
        return _convert(known, cls)


class _EventWire(msgspec.Struct):
    """A RunEvent whose payload was validated and encoded in the caller's thread."""

    run_id: str
    event_type: str
    timestamp: str
    payload: msgspec.Raw | None
    id: str


class APIPayload(msgspec.Struct, omit_defaults=True):
    """The subset of a run exported to Google Sheets (one row, in this field order)."""

    run_id: str
    agent_name: str
    job_type: str
    trigger_type: str
    start_time: str
    status: str
    agent_owner: str | None = None
    end_time: str | None = None
    items_discovered: int = 0
    items_succeeded: int = 0
    items_failed: int = 0
    duration_ms: int | None = None
    error_summary: str | None = None
    product: str | None = None
    platform: str | None = None
    product_family: str | None = None
    subdomain: str | None = None
    git_repo: str | None = None
    git_branch: str | None = None
    host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Fields that are set (None left out)."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return encode(self.to_dict()).decode()

    def to_row(self) -> list[Any]:
        """The Sheets row: every field in :data:`SHEET_COLUMNS` order, None as ''."""
        return ["" if v is None else v for v in msgspec.structs.astuple(self)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> APIPayload:
        if not isinstance(data, dict):
            raise TypeError(f"APIPayload.from_dict needs a dict, got {data!r}")
        return _convert({k: v for k, v in data.items() if k in SHEET_COLUMNS}, cls)

    @classmethod
    def from_run_record(cls, record: RunRecord) -> APIPayload:
        return cls(*(getattr(record, name) for name in SHEET_COLUMNS))


_RUN_FIELDS = frozenset(RunRecord.__struct_fields__)
_EVENT_FIELDS = frozenset(RunEvent.__struct_fields__)
SHEET_COLUMNS: tuple[str, ...] = APIPayload.__struct_fields__



def _convert(data: dict[str, Any], cls: type) -> Any:
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise TypeError(f"{cls.__name__}: {exc}") from None


def _json_object(field: str, text: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        raise ValueError(f"{field} must be a JSON object, got the string {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object, got {value!r}")
    return value


# -- field checks (the caller's thread: cheap type tests, errors name field and value) ------
_STR_FIELDS = frozenset({
    "agent_owner", "input_summary", "output_summary", "error_summary", "error_details",
    "insight_id", "product", "platform", "product_family", "subdomain", "git_repo",
    "git_branch", "git_run_tag", "host",
})
_COUNT_FIELDS = frozenset({"items_discovered", "items_succeeded", "items_failed"})
#: fields a caller may set through start_run/end_run/set_metrics keywords
SETTABLE_FIELDS = frozenset(_STR_FIELDS | _COUNT_FIELDS | {"metrics_json"})


def check_run_fields(fields: dict[str, Any]) -> None:
    """Validate keyword fields in place (``metrics_json`` is copied, strings parsed)."""
    for name, value in fields.items():
        if name in _STR_FIELDS:
            if value is not None and type(value) is not str:
                raise TypeError(f"{name} must be a string or None, got {value!r}")
        elif name in _COUNT_FIELDS:
            if type(value) is not int or value < 0:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{name} must be a non-negative integer, got {value!r}")
                if value < 0:
                    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
                fields[name] = int(value)
        elif name == "metrics_json":
            if isinstance(value, str):
                value = _json_object("metrics_json", value)
            fields[name] = check_json_object("metrics_json", value)
        else:
            raise TypeError(
                f"unknown run field {name!r}; settable fields: {', '.join(sorted(SETTABLE_FIELDS))}"
            )


def check_status(status: Any) -> str:
    if status not in RUN_STATUSES or type(status) is not str:
        raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    return status


# -- helpers ---------------------------------------------------------------------------------
def get_iso8601_timestamp() -> str:
    """Now, ISO 8601 in UTC with microseconds: ``2026-01-02T03:04:05.678901+00:00``."""
    return datetime.now(UTC).isoformat()


def generate_run_id(agent_name: str, now: datetime | None = None) -> str:
    """``{YYYYMMDD}T{HHMMSS}Z-{agent_name}-{12 hex}``: sortable by start second, unique by
    48 random bits (``random`` reseeds after fork, so forked children do not collide)."""
    if type(agent_name) is not str or not agent_name:
        raise ValueError(f"agent_name must be a non-empty string, got {agent_name!r}")
    ts = (now or datetime.now(UTC)).astimezone(UTC).isoformat()
    return _run_id(agent_name, ts)


def _run_id(agent_name: str, iso: str) -> str:
    # slicing the ISO string costs a third of strftime on the hot path
    return (
        f"{iso[0:4]}{iso[5:7]}{iso[8:10]}T{iso[11:13]}{iso[14:16]}{iso[17:19]}Z-"
        f"{agent_name}-{random.getrandbits(48):012x}"
    )


def parse_timestamp(value: str | datetime) -> datetime:
    """An ISO 8601 string (``Z`` allowed) or datetime as an aware UTC datetime; naive is UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    else:
        raise TypeError(f"a timestamp must be an ISO 8601 string or datetime, got {value!r}")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def calculate_duration_ms(start_time: str | datetime, end_time: str | datetime) -> int:
    """Whole milliseconds from ``start_time`` to ``end_time`` (ISO strings or datetimes)."""
    delta = parse_timestamp(end_time) - parse_timestamp(start_time)
    return delta // _MS


_MS = datetime(2000, 1, 1, 0, 0, 0, 1000) - datetime(2000, 1, 1)
