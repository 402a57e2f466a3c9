"""OpenAPI schemas of the collector's request and response bodies.

The bodies are decoded with msgspec (not FastAPI/pydantic: several times faster per
record), so FastAPI cannot infer them; they are generated here from the same msgspec
types and declared on each route, and the `/docs` page shows them."""

from __future__ import annotations

from typing import Any

import msgspec

from ..schema.limits import (
    MAX_BATCH_ITEMS,
    MAX_COST,
    MAX_ID_CHARS,
    MAX_SEQ,
    MAX_TAG_KEY_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
)
from ..schema.records import TOKEN_FIELDS, UsageRecord

REF = "#/components/schemas/{name}"


class TrackAliasItem(msgspec.Struct):
    """The `/track` item shape of PersistentDelivery's seed: provider = `api_id`, model =
    `service_key` (a `provider::model` key is split), token counts (`input_tokens`,
    `output_tokens`, `prompt_tokens`, `completion_tokens`, `cache_read_input_tokens`, ...)
    and `cost` read from `payload`, which is stored as given."""

    id: str
    api_id: str
    service_key: str
    payload: dict[str, Any] | None = None
    timestamp: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    customer_key: str | None = None


class TrackResult(msgspec.Struct, omit_defaults=True):
    id: str
    status: str
    error: str | None = None


class TrackResponse(msgspec.Struct, omit_defaults=True):
    """Compact when no item was rejected (``accepted``, ``duplicate``, ``duplicate_ids``);
    with ``rejected`` and one entry per item in ``results`` otherwise."""

    accepted: int
    duplicate: int
    duplicate_ids: list[str] | None = None
    rejected: int | None = None
    results: list[TrackResult] | None = None


class RunResult(msgspec.Struct, omit_defaults=True):
    id: str
    run_id: str
    status: str
    error: str | None = None


class RunBatchResponse(msgspec.Struct):
    results: list[RunResult]


class RunWriteResponse(msgspec.Struct):
    run_id: str
    status: str


def components() -> dict[str, Any]:
    _, comps = msgspec.json.schema_components(
        [UsageRecord, TrackAliasItem, TrackResponse, RunBatchResponse, RunWriteResponse],
        ref_template=REF,
    )
    rec = comps["UsageRecord"]
    rec["description"] = (
        "One LLM call's usage. `id` is made by the client (a UUIDv7): a second copy of an "
        "id is stored once and answered `duplicate`. A missing `cost` is priced by the "
        "collector; unknown models keep cost null."
    )
    props = rec["properties"]
    props["timestamp"] = {"type": "string", "format": "date-time",
                          "description": "ISO 8601; naive means UTC"}
    for key in ("id", "provider", "model", "currency"):
        props[key] = {**props[key], "minLength": 1}
    props["id"]["maxLength"] = MAX_ID_CHARS
    for key in ("provider", "model", "currency", "user_id", "session_id", "customer_key",
                "run_id", "response_id"):
        if "anyOf" in props[key]:  # str | None
            props[key] = {"anyOf": [{"type": "string", "maxLength": MAX_TEXT_CHARS}, {"type": "null"}],
                          **({"default": props[key]["default"]} if "default" in props[key] else {})}
        else:
            props[key] = {**props[key], "maxLength": MAX_TEXT_CHARS}
    props["tags"] = {**props["tags"], "maxProperties": MAX_TAGS,
                     "propertyNames": {"maxLength": MAX_TAG_KEY_CHARS},
                     "additionalProperties": {"type": "string", "maxLength": MAX_TAG_VALUE_CHARS}}
    for key in TOKEN_FIELDS:
        props[key] = {**props[key], "minimum": 0, "maximum": MAX_TOKENS}
    props["cost"] = {
        "anyOf": [{"type": "string", "format": "decimal"},
                  {"type": "number", "minimum": 0, "maximum": int(MAX_COST)}, {"type": "null"}],
        "description": "exact decimal (a string keeps every digit)",
    }
    comps["TrackBody"] = {
        "type": "object",
        "required": ["tracked"],
        "properties": {"tracked": {"type": "array", "maxItems": MAX_BATCH_ITEMS, "items": {"anyOf": [
            {"$ref": REF.format(name="UsageRecord")}, {"$ref": REF.format(name="TrackAliasItem")},
        ]}}},
    }
    run_props = {
        "run_id": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS},
        "seq": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ,
                "description": "orders the writes of one run; a write that is not newer "
                               "than the stored one changes nothing"},
    }
    comps["RunIn"] = {
        "type": "object", "required": ["run_id"], "properties": run_props,
        "additionalProperties": True,
        "description": "An agent run (the RunRecord fields: agent_name, job_type, status, "
                       "start_time, ...); every key other than run_id and seq is a field.",
    }
    comps["RunPatch"] = {
        "type": "object", "properties": {"seq": run_props["seq"]}, "additionalProperties": True,
        "description": "Fields to merge into the run. Without seq the update applies on top "
                       "of what is stored.",
    }
    comps["RunBatchItem"] = {
        "type": "object", "required": ["id", "run_id"],
        "properties": {
            "id": {"type": "string", "minLength": 1, "description": "this write's id"},
            **run_props,
            "create": {"type": "boolean", "default": True,
                       "description": "true: POST semantics (create or apply if newer); "
                                      "false: PATCH semantics (missing if unknown)"},
        },
        "additionalProperties": True,
    }
    comps["RunBatch"] = {
        "type": "object", "required": ["runs"],
        "properties": {"runs": {"type": "array", "maxItems": MAX_BATCH_ITEMS,
                                "items": {"$ref": REF.format(name="RunBatchItem")}}},
    }
    return comps


def body(name: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body of component ``name``."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(name=name)}}}}}


def response(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(name=name)}}}}


ERROR = {"description": "refused; `detail` says why",
         "content": {"application/json": {"schema": {
             "type": "object", "properties": {"detail": {}}}}}}
