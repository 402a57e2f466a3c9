"""Agent-run telemetry: ``TelemetryClient``, ``RunRecord``, ``RunEvent``,
``APIPayload`` and the local writers. See docs/telemetry.md."""

from __future__ import annotations

from ..schema.runs import (
    RUN_STATUSES,
    SCHEMA_VERSION,
    APIPayload,
    RunEvent,
    RunRecord,
    RunWrite,
    calculate_duration_ms,
    generate_run_id,
    get_iso8601_timestamp,
)
from .client import RunContext, TelemetryClient
from .config import ConfigError, TelemetryConfig
from .ndjson import NdjsonSink, NDJSONWriter
from .sqlite_writer import DatabaseWriter, SqliteRunSink

__all__ = [
    "TelemetryClient",
    "RunContext",
    "TelemetryConfig",
    "ConfigError",
    "RunRecord",
    "RunEvent",
    "RunWrite",
    "APIPayload",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "generate_run_id",
    "get_iso8601_timestamp",
    "calculate_duration_ms",
    "NDJSONWriter",
    "NdjsonSink",
    "DatabaseWriter",
    "SqliteRunSink",
]
