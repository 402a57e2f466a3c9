"""RunRecord, RunEvent, APIPayload and the helpers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from usageledger.telemetry import (
    APIPayload,
    RunEvent,
    RunRecord,
    calculate_duration_ms,
    generate_run_id,
    get_iso8601_timestamp,
)
from usageledger.telemetry.models import SHEET_COLUMNS, check_run_fields


def full_record() -> RunRecord:
    return RunRecord(
        "r-1", "agent", "job", "cron", "2026-01-02T03:04:05+00:00", agent_owner="me",
        status="success", items_discovered=5, items_succeeded=4, items_failed=1, duration_ms=1500,
        metrics_json={"pages": [1, 2], "severity": "high"}, insight_id="ins-9", product="words",
        platform="linux", product_family="words", subdomain="docs", git_repo="r", git_branch="main",
        git_run_tag="t1", host="h", end_time="2026-01-02T03:04:06.500000+00:00",
    )


def test_run_record_round_trips_through_dict_and_json():
    rec = full_record()
    d = rec.to_dict()
    assert d["record_type"] == "run" and d["metrics_json"] == {"pages": [1, 2], "severity": "high"}
    assert RunRecord.from_dict(d) == rec
    assert RunRecord.from_dict(json.loads(rec.to_json())) == rec


def test_run_record_from_dict_ignores_bookkeeping_and_parses_metrics_strings():
    d = {**full_record().to_dict(), "seq": 7, "id": "w", "create": True,
         "metrics_json": '{"a": 1}'}
    rec = RunRecord.from_dict(d)
    assert rec.metrics_json == {"a": 1}
    # every other field kept as given, the bookkeeping keys dropped
    assert rec == msgspec.structs.replace(full_record(), metrics_json={"a": 1})
    assert not hasattr(rec, "seq") and not hasattr(rec, "create")


def test_run_record_from_dict_bad_types_name_the_field():
    with pytest.raises(TypeError, match="items_failed"):
        RunRecord.from_dict({"run_id": "r", "agent_name": "a", "job_type": "j", "items_failed": "3"})
    with pytest.raises(ValueError, match="metrics_json must be a JSON object"):
        RunRecord.from_dict({"run_id": "r", "agent_name": "a", "job_type": "j", "metrics_json": "[1]"})
    with pytest.raises(TypeError, match="needs a dict"):
        RunRecord.from_dict([1])


def test_run_event_round_trip_and_seed_payload_json():
    ev = RunEvent("r-1", "step", "2026-01-02T03:04:05+00:00", {"n": 1}, "e-1")
    assert ev.to_dict()["record_type"] == "event"
    assert RunEvent.from_dict(json.loads(ev.to_json())) == ev
    seed = {"run_id": "r-1", "event_type": "step", "timestamp": "t", "payload_json": '{"n": 2}', "id": 3}
    assert RunEvent.from_dict(seed) == RunEvent("r-1", "step", "t", {"n": 2}, "3")
    with pytest.raises(TypeError, match="event_type"):
        RunEvent.from_dict({"run_id": "r", "event_type": 5, "timestamp": "t"})


def test_api_payload_from_run_record_to_dict_json_row():
    p = APIPayload.from_run_record(full_record())
    d = p.to_dict()
    assert d["run_id"] == "r-1" and d["items_failed"] == 1 and "metrics_json" not in d
    assert all(v is not None for v in d.values())
    assert APIPayload.from_dict(json.loads(p.to_json())) == p
    row = p.to_row()
    assert len(row) == len(SHEET_COLUMNS) and row[0] == "r-1"
    sparse = APIPayload.from_run_record(RunRecord("r-2", "a", "j", start_time="s"))
    assert sparse.to_row()[SHEET_COLUMNS.index("end_time")] == ""


def test_generate_run_id_format_and_uniqueness():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rid = generate_run_id("my-agent", when)
    assert re.fullmatch(r"20260102T030405Z-my-agent-[0-9a-f]{12}", rid)
    ids = {generate_run_id("a") for _ in range(20_000)}
    assert len(ids) == 20_000
    with pytest.raises(ValueError, match="agent_name"):
        generate_run_id("")


def test_iso8601_timestamp_is_utc_and_parses():
    ts = get_iso8601_timestamp()
    parsed = datetime.fromisoformat(ts)
    assert parsed.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def test_calculate_duration_ms_accepts_z_offsets_naive_and_datetimes():
    assert calculate_duration_ms("2026-01-01T00:00:00Z", "2026-01-01T00:00:01.250Z") == 1250
    # naive is UTC; other offsets are converted
    assert calculate_duration_ms("2026-01-01T00:00:00", "2026-01-01T02:00:00+02:00") == 0
    start = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    assert calculate_duration_ms(start, start + timedelta(milliseconds=7)) == 7
    with pytest.raises(ValueError, match="not an ISO 8601"):
        calculate_duration_ms("yesterday", "2026-01-01T00:00:00Z")


def test_check_run_fields_errors_name_field_and_value():
    with pytest.raises(TypeError, match="unknown run field 'colour'"):
        check_run_fields({"colour": "red"})
    with pytest.raises(TypeError, match=r"items_succeeded must be a non-negative integer, got '3'"):
        check_run_fields({"items_succeeded": "3"})
    with pytest.raises(ValueError, match="items_failed .* got -1"):
        check_run_fields({"items_failed": -1})
    with pytest.raises(TypeError, match="product must be a string"):
        check_run_fields({"product": 3})
    with pytest.raises(ValueError, match="metrics_json"):
        check_run_fields({"metrics_json": {"x": float("nan")}})
    fields = {"metrics_json": '{"a": 1}'}
    check_run_fields(fields)
    assert fields == {"metrics_json": {"a": 1}}
