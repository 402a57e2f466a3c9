"""The collector's price routes (``/api/v1/prices``), over the prices in its storage.

- ``PUT /prices/{provider}/{model}``: one entry of the model's history (its
  ``effective_from`` date, or from the beginning); an entry at the same date is replaced;
- ``DELETE /prices/{provider}/{model}?effective_from=YYYY-MM-DD``: one entry (without the
  parameter: the entry from the beginning);
- ``GET /prices/{provider}/{model}``: its history; ``GET /prices``: every entry and alias;
- ``PUT /prices/aliases/{provider}/{name}`` ``{"model": ...}``; ``DELETE`` the same path.
- ``POST /reprice`` ``{"since", "until", "provider", "model", "only_unknown"}`` (all
  optional) starts a reprice job in this process (202 with its ``job_id``);
  ``GET /reprice/{job_id}`` answers its progress.

Bad input answers 400 naming the field. Provider, model and alias names are kept
lower-cased, as records are matched to them case-insensitively.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import APIRouter, HTTPException, Request
from fastapi.params import Depends
from fastapi.responses import Response

from ..prices.pricebook import PriceBook, PriceInputError, entry_json, parse_price
from ..storage.base import StorageBackend
from .responses import json_response

__all__ = ["attach"]




async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return msgspec.json.decode(raw) if raw.strip() else None
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"body: not JSON: {exc}") from None


def attach(store: StorageBackend, authorize: Callable[..., Any],
           call: Callable[..., Any]) -> tuple[APIRouter, PriceBook]:
    """The price and reprice routes over ``store`` and the :class:`PriceBook` that prices
    /track. Reprice jobs run in a thread of this process; their progress is kept in memory
    (a restart forgets it; running the job again is harmless, as reprice is idempotent)."""
    book = PriceBook(store)
    router = APIRouter(prefix="/api/v1/prices", dependencies=[Depends(authorize)], tags=["prices"])

    def need() -> None:
        if not getattr(store, "supports_prices", False):
            raise HTTPException(501, f"the collector's storage ({type(store).__name__}) does not keep "
                                     "prices: use sqlite, postgresql, redis, jsonl or memory")

    def history(provider: str, model: str) -> list[dict[str, Any]]:
        return [e for e in call(store.list_prices) if (e["provider"], e["model"]) == (provider, model)]

    @router.get("", summary="Every price entry (with its history) and alias")
    def list_prices() -> Response:
        need()
        return json_response({"prices": call(store.list_prices), "aliases": call(store.list_aliases)})

    @router.put("/aliases/{provider}/{name}", summary="Map a deployment name or snapshot to a priced model")
    async def put_alias(provider: str, name: str, request: Request) -> Response:
        need()
        body = await _body(request)
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(body, dict) or set(body) != {"model"} or not isinstance(model, str) or not model.strip():
            raise HTTPException(400, f"the request body: model must be the priced model's name, as "
                                     f"{{\"model\": \"gpt-4o-2024-08-06\"}}, got {body!r}")
        p, n, m = provider.lower(), name.lower(), model.strip().lower()
        await _run(call, store.put_alias, p, n, m)
        book.refresh()
        return json_response({"provider": p, "name": n, "model": m})

    @router.delete("/aliases/{provider}/{name}", summary="Delete an alias")
    def delete_alias(provider: str, name: str) -> Response:
        need()
        if not call(store.delete_alias, provider.lower(), name.lower()):
            raise HTTPException(404, f"no alias {provider}/{name}")
        book.refresh()
        return json_response({"provider": provider.lower(), "name": name.lower(), "deleted": True})

    @router.put("/{provider}/{model}", summary="Add or replace one entry of a model's price history")
    async def put_price(provider: str, model: str, request: Request) -> Response:
        need()
        try:
            day, entry = parse_price(await _body(request), "the request body")
        except PriceInputError as exc:
            raise HTTPException(400, str(exc)) from None
        p, m = provider.lower(), model.lower()
        await _run(call, store.put_price, p, m, day, entry_json(entry))
        book.refresh()
        return json_response({"provider": p, "model": m, "history": history(p, m)})

    @router.get("/{provider}/{model}", summary="A model's price history")
    def get_price(provider: str, model: str) -> Response:
        need()
        p, m = provider.lower(), model.lower()
        got = history(p, m)
        if not got:
            raise HTTPException(404, f"no price entry for {p}/{m}")
        return json_response({"provider": p, "model": m, "history": got})

    @router.delete("/{provider}/{model}", summary="Delete one entry of a model's price history")
    def delete_price(provider: str, model: str, effective_from: str | None = None) -> Response:
        need()
        try:
            day, _ = parse_price({"input_per_mtok": "0", "output_per_mtok": "0",
                                  "effective_from": effective_from}, "the query")
        except PriceInputError as exc:
            raise HTTPException(400, str(exc)) from None
        p, m = provider.lower(), model.lower()
        if not call(store.delete_price, p, m, day):
            raise HTTPException(404, f"no price entry for {p}/{m} from {day or 'the beginning'}")
        book.refresh()
        return json_response({"provider": p, "model": m, "effective_from": day or None, "deleted": True})

    reprice_router = APIRouter(prefix="/api/v1/reprice", dependencies=[Depends(authorize)], tags=["prices"])
    jobs: dict[str, dict[str, Any]] = {}
    jobs_lock = threading.Lock()

    @reprice_router.post("", summary="Start recomputing stored costs from the current prices", status_code=202)
    async def start_reprice(request: Request) -> Response:
        from ..prices.reprice import reprice, supports_reprice

        if not supports_reprice(store):
            raise HTTPException(501, f"the collector's storage ({type(store).__name__}) cannot reprice: "
                                     "use sqlite, postgresql or memory")
        body = await _body(request) or {}
        options = _reprice_options(body)
        job_id = uuid.uuid4().hex
        job: dict[str, Any] = {"job_id": job_id, "status": "running", "seen": 0, "changed": 0,
                               "options": body, "error": None}
        with jobs_lock:
            jobs[job_id] = job

        def progress(seen: int, changed: int) -> None:
            job.update(seen=seen, changed=changed)

        def run() -> None:
            try:
                job.update(reprice(store, book=PriceBook(store), progress=progress, **options), status="done")
            except Exception as exc:  # the job's answer carries it
                job.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            book.refresh()

        threading.Thread(target=run, name=f"reprice-{job_id[:8]}", daemon=True).start()
        return json_response(dict(job), 202)

    @reprice_router.get("/{job_id}", summary="A reprice job's progress")
    def reprice_job(job_id: str) -> Response:
        with jobs_lock:
            job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no reprice job {job_id!r} in this collector process")
        return json_response(dict(job))

    both = APIRouter()
    both.include_router(router)
    both.include_router(reprice_router)
    return both, book


def _reprice_options(body: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`usageledger.reprice.reprice` from a request body (400
    naming the field)."""
    if not isinstance(body, dict):
        raise HTTPException(400, f"the request body must be a JSON object, got {body!r}")
    unknown = set(body) - {"since", "until", "provider", "model", "only_unknown"}
    if unknown:
        raise HTTPException(400, f"the request body has unknown field(s) {sorted(unknown)}; use "
                                 "since, until, provider, model, only_unknown")
    out: dict[str, Any] = {}
    for k in ("since", "until"):
        v = body.get(k)
        if v is None:
            continue
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00")) if isinstance(v, str) else None
        except ValueError:
            t = None
        if t is None:
            raise HTTPException(400, f"the request body: {k} must be an ISO 8601 time, got {v!r}")
        out[k] = t if t.tzinfo else t.replace(tzinfo=UTC)
    for k in ("provider", "model"):
        v = body.get(k)
        if v is not None and (not isinstance(v, str) or not v):
            raise HTTPException(400, f"the request body: {k} must be a non-empty string, got {v!r}")
        if v is not None:
            out[k] = v
    only = body.get("only_unknown", False)
    if not isinstance(only, bool):
        raise HTTPException(400, f"the request body: only_unknown must be true or false, got {only!r}")
    out["only_unknown"] = only
    return out


async def _run(call: Callable[..., Any], fn: Callable[..., Any], *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(call, fn, *args)
