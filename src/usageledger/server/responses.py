"""The collector's JSON answers: one encoder (``records.encode``: exact decimals as strings,
datetimes in ISO 8601) for every route."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from ..schema.records import encode

__all__ = ["json_response", "encode"]


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(obj), status_code=status, media_type="application/json", headers=headers)
