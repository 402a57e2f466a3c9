"""The collector's key routes (``/api/v1/keys``, admin keys only):

- ``POST /keys`` ``{"project", "role", "name"?, "expires"?}`` -> 201 ``{"id", "key", ...}``:
  the token is in this answer only;
- ``GET /keys`` lists keys without secrets (a global key: every project, or ``?project=``);
- ``DELETE /keys/{id}`` revokes at once (every replica reads the key on each request).

A project admin key manages the keys of its own project only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from .auth import Principal, new_key, principal_of, public_key
from .responses import json_response as _json

__all__ = ["attach"]


def attach(store: Any, authorize: Callable[..., Any], call: Callable[..., Any]) -> APIRouter:
    """The key routes over ``store``; ``authorize`` is the app's key check, ``call`` wraps
    storage calls."""
    router = APIRouter(prefix="/api/v1/keys", dependencies=[Depends(authorize)], tags=["keys"])

    def admin(request: Request) -> Principal:
        p = principal_of(request)
        if p.role != "admin" or p.session:
            raise HTTPException(403, f"only an admin key manages keys; this one is a {p.role} key")
        if not getattr(store, "supports_keys", False):
            raise HTTPException(501, f"the collector's storage ({type(store).__name__}) does not "
                                     "keep API keys: use sqlite or postgresql")
        return p

    @router.post("", summary="Create a project key (its secret is shown once)", status_code=201)
    async def create(request: Request) -> Response:
        p = admin(request)
        raw = await request.body()
        if len(raw) > 64 * 1024:
            raise HTTPException(413, "the body is larger than 64 KiB")
        try:
            body = msgspec.json.decode(raw) if raw.strip() else {}
        except msgspec.DecodeError as exc:
            raise HTTPException(400, f"body: not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HTTPException(400, f"body: expected a JSON object, got {type(body).__name__}")
        unknown = set(body) - {"project", "role", "name", "expires"}
        if unknown:
            raise HTTPException(400, f"body: unknown field(s) {sorted(unknown)}")
        project = p.scope(body.get("project")) or body.get("project")
        try:
            row, token = new_key(project, body.get("role"), body.get("name"), body.get("expires"))
        except ValueError as exc:
            raise HTTPException(400, f"body: {exc}") from None
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(call, store.put_key, row)
        return _json({**public_key(row), "key": token}, 201)

    @router.get("", summary="The keys (without secrets)")
    def list_keys(request: Request, project: str | None = None) -> Response:
        p = admin(request)
        rows = call(store.list_keys, p.scope(project))
        return _json({"keys": [public_key(r) for r in rows]})

    @router.delete("/{key_id}", summary="Revoke a key at once")
    def revoke(key_id: str, request: Request) -> Response:
        p = admin(request)
        when = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        if not call(store.revoke_key, key_id, when, p.project):
            raise HTTPException(404, f"no active key {key_id[:40]!r}" + (
                f" in project {p.project!r}" if p.project else ""))
        return _json({"id": key_id, "revoked_at": when})

    return router
