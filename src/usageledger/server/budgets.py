"""The collector's budget routes (``/api/v1/budgets``), over the one budgets engine.

- ``PUT /budgets/{name}`` creates or replaces (400 naming the field for bad input);
- ``GET /budgets`` lists every budget with its status; ``GET /budgets/{name}`` one;
  ``DELETE /budgets/{name}``;
- ``GET /budgets/check?user_id=&customer_key=&provider=&model=&session_id=&tags=k:v``.

:func:`attach` builds the engine and the alert loop for an app: the loop starts with the
app and stops with it; ``note`` is what /track calls with each batch of newly stored
records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.params import Depends
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..budgets.alerts import AlertSender
from ..budgets.engine import AlertLoop, Budgets, check_attributes
from ..budgets.model import BudgetInputError, parse_budget
from ..schema.records import UsageRecord
from ..storage._keys import PROJECT_TAG
from ..storage.base import StorageBackend
from .auth import principal_of
from .responses import json_response

__all__ = ["BudgetService", "attach"]

log = logging.getLogger("usageledger.server")




class BudgetService:
    """The engine, the alert sender and loop of one collector app."""

    def __init__(self, store: StorageBackend, alert_journal: str | os.PathLike[str] | None,
                 *, cache_s: float = 1.0, alert_interval: float = 0.5):
        self.enabled = bool(getattr(store, "supports_budgets", False))
        self.engine: Budgets | None = None
        self.loop: AlertLoop | None = None
        self._journal = alert_journal
        if self.enabled:
            self.engine = Budgets(store, cache_s=cache_s, alerts=self._sender)
            self.loop = AlertLoop(self.engine, interval=alert_interval)

    def _sender(self) -> AlertSender:
        return AlertSender(self._journal)

    def note(self, records: Sequence[UsageRecord], new: set[str]) -> None:
        """After /track stored ``new`` of ``records``: queue them for alert evaluation."""
        if self.loop is not None and new:
            left = set(new)  # a batch may hold copies of one id: each stored record once
            self.loop.note([r for r in records if r.id in left and not left.discard(r.id)])

    def start(self) -> None:
        if self.loop is not None:
            # a sender on the journal now: alerts a crash left in it are delivered
            if self._journal is not None and Path(os.fspath(self._journal)).exists():
                assert self.engine is not None
                _ = self.engine.alerts
            self.loop.start()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
        if self.engine is not None and self.engine._alerts is not None and hasattr(self.engine._alerts, "send"):
            self.engine.alerts.close()  # type: ignore[union-attr]


def attach(store: StorageBackend, alert_journal: str | os.PathLike[str] | None,
           authorize: Callable[..., Any], call: Callable[..., Any]) -> tuple[APIRouter, BudgetService]:
    """The budget routes for an app over ``store``; ``call`` wraps storage calls (its
    errors answer 503/501), ``authorize`` is the app's key check."""
    service = BudgetService(store, alert_journal)
    router = APIRouter(prefix="/api/v1/budgets", dependencies=[Depends(authorize)], tags=["budgets"])

    def project_of_budget(definition: dict[str, Any]) -> str | None:
        return ((definition.get("scope") or {}).get("tags") or {}).get(PROJECT_TAG)

    def visible(request: Request, name: str) -> bool:
        """Whether the caller's project (if any) owns the budget ``name`` (a project's
        budgets are those scoped to its tag)."""
        scope = principal_of(request).scope(request.query_params.get("project"))
        if scope is None:
            return True
        b = call(engine().budgets, fresh=True).get(name)
        return b is not None and project_of_budget(b.definition()) == scope

    def engine() -> Budgets:
        if service.engine is None:
            raise HTTPException(501, f"the collector's storage ({type(store).__name__}) does not keep "
                                     "budgets: use sqlite or postgresql")
        return service.engine

    @router.get("/check", summary="Whether a call with these attributes is within every budget covering it")
    def check(
        request: Request,
        user_id: str | None = None,
        customer_key: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        session_id: str | None = None,
        tags: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
    ) -> Response:
        attrs = {"user_id": user_id or None, "customer_key": customer_key or None,
                 "provider": provider or None, "model": model or None, "session_id": session_id or None,
                 "tags": tags or None}
        scope = principal_of(request).scope(request.query_params.get("project"))
        if scope is not None:  # only the project's budgets cover its calls
            attrs["tags"] = [t for t in tags or () if not t.startswith(PROJECT_TAG + ":")]
            attrs["tags"].append(f"{PROJECT_TAG}:{scope}")
        try:
            check_attributes(attrs, "the query")  # bad input is 400, before any storage call
        except BudgetInputError as exc:
            raise HTTPException(400, str(exc)) from None
        return json_response(call(engine().check, **attrs))

    @router.get("", summary="Every budget with its status")
    def list_budgets(request: Request) -> Response:
        scope = principal_of(request).scope(request.query_params.get("project"))
        rows = call(engine().list)
        if scope is not None:
            rows = [r for r in rows if project_of_budget(r) == scope]
        return json_response({"budgets": rows})

    @router.put("/{name}", summary="Create or replace a budget")
    async def put_budget(name: str, request: Request) -> Response:
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw) if raw.strip() else None
        except msgspec.DecodeError as exc:
            raise HTTPException(400, f"body: not JSON: {exc}") from None
        eng = engine()
        scope = principal_of(request).scope(request.query_params.get("project"))
        if scope is not None:
            # the budget is the project's: scoped to its tag, whatever the body says
            if isinstance(body, dict) and isinstance(body.get("scope", {}), dict):
                tags = (body.get("scope") or {}).get("tags")
                body = {**body, "scope": {**(body.get("scope") or {}),
                                          "tags": {**(tags if isinstance(tags, dict) else {}),
                                                   PROJECT_TAG: scope}}}
            existing = (await run_in_threadpool(call, eng.budgets, fresh=True)).get(name)
            if existing is not None and project_of_budget(existing.definition()) != scope:
                raise HTTPException(409, f"budget {name!r} belongs to another project")
        try:
            parse_budget(name, body, "the request body")  # bad input is 400, before storage
        except BudgetInputError as exc:
            raise HTTPException(400, str(exc)) from None
        await run_in_threadpool(call, eng.put, name, body)
        return json_response(await run_in_threadpool(call, eng.status, name))

    @router.get("/{name}", summary="One budget with its status")
    def get_budget(name: str, request: Request) -> Response:
        status = call(engine().status, name) if visible(request, name) else None
        if status is None:
            raise HTTPException(404, f"no budget {name!r}")
        return json_response(status)

    @router.delete("/{name}", summary="Delete a budget")
    def delete_budget(name: str, request: Request) -> Response:
        if not visible(request, name) or not call(engine().remove, name):
            raise HTTPException(404, f"no budget {name!r}")
        return json_response({"name": name, "deleted": True})

    return router, service
