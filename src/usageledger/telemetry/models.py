"""The run schema, as the telemetry client has always imported it: the same objects as
:mod:`usageledger.runs` (their one home, beside the usage schema), not copies."""

from __future__ import annotations

from ..schema.runs import (  # noqa: F401  (re-exported, private helpers included for the client)
    _EVENT_FIELDS,
    _MS,
    _RUN_FIELDS,
    MAX_RUN_ID_LENGTH,
    RUN_STATUSES,
    SCHEMA_VERSION,
    SETTABLE_FIELDS,
    SHEET_COLUMNS,
    APIPayload,
    RunEvent,
    RunRecord,
    RunWrite,
    __all__,  # noqa: F401
    _convert,
    _EventWire,
    _json_object,
    _run_id,
    calculate_duration_ms,
    check_run_fields,
    check_status,
    generate_run_id,
    get_iso8601_timestamp,
    parse_timestamp,
)
