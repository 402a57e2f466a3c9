"""The collector service (docs/collector.md): a FastAPI app over any StorageBackend.

- ``create_app(storage, api_keys=None, max_body_bytes=...)`` builds the ASGI app;
- ``serve(storage, host=, port=, api_keys=)`` runs it under uvicorn
  (``usageledger serve --storage URL --host --port --api-key``).

The app keeps no state of its own besides metrics: exactly-once is the storage's primary
key on ``id``, so any number of collector processes can share one PostgreSQL. Blocking
storage calls run in the threadpool (``def`` routes, ``run_in_threadpool``), never on the
event loop. Request bodies are read here, under a byte limit counted while reading (and
again while decompressing gzip), and decoded with msgspec.
"""

from __future__ import annotations

import functools
import gc
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRouter
from starlette.concurrency import run_in_threadpool

from ..errors import UsageLedgerError
from ..schema.limits import MAX_ANSWER_BYTES, short
from ..schema.records import CREATED, MISSING, UsageRecord, to_utc
from ..schema.totals import Totals
from ..storage import StorageBackend, create_storage
from ..storage._retention import raw_since
from ..storage.base import check_group_by, from_us
from . import budgets as budget_routes
from . import key_routes, schema
from . import prices as price_routes
from .auth import PROJECT_TAG, TOKEN_PREFIX, Authenticator, KeySessions, Principal, principal_of
from .collector import Collector, track_answer
from .headers import SecurityHeadersMiddleware
from .keys import API_KEYS_ENV, keys_from_env
from .metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware, UsageTotals
from .pages import install_pages
from .responses import encode, json_response
from .session import COOKIE_NAME, SessionSigner
from .wire import (
    BodyError,
    decode_run,
    decode_run_batch,
    decode_run_patch,
    decode_track,
    read_gzip,
)

__all__ = ["create_app", "serve", "track_answer", "DEFAULT_MAX_BODY_BYTES", "API_KEYS_ENV"]

log = logging.getLogger("usageledger.server")

#: the largest request body, compressed or not (the client's default batch cap is 4 MiB)
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: the largest page of /usage and /runs
MAX_PAGE = 1000
MAX_OFFSET = 10**9
#: rows fetched from storage at a time while a page is filled up to MAX_ANSWER_BYTES, so
#: a page of large rows never holds more than this many of them in memory
_RECORDS_CHUNK = 100
_RUNS_CHUNK = 16



def plain(cost: Decimal) -> str:
    """A cost as a plain decimal string ("0.00000075", never "7.5E-7"), every digit kept."""
    return format(cost, "f")



def _page(fetch: Callable[[int, int], list[Any]], limit: int, offset: int, chunk: int,
          encode: Callable[[Any], bytes]) -> tuple[list[bytes], bool]:
    """Encoded rows from ``offset`` on, at most ``limit`` of them and (past the first) at
    most MAX_ANSWER_BYTES in all, fetched ``chunk`` rows at a time; and whether more may
    follow."""
    parts: list[bytes] = []
    size = 0
    while len(parts) < limit:
        want = min(chunk, limit - len(parts))
        rows = fetch(want, offset + len(parts))
        for row in rows:
            data = encode(row)
            if parts and size + len(data) > MAX_ANSWER_BYTES:
                return parts, True
            parts.append(data)
            size += len(data)
        if len(rows) < want:
            return parts, False
    return parts, True


class StorageUnavailable(UsageLedgerError):
    """A storage call failed for a reason that is not the request's fault (answered 503)."""


@functools.lru_cache(maxsize=1024)
def _is_loopback(host: str | None) -> bool:
    # remembered per address: parsing one took about 30 µs of every keyless request
    if host is None:
        return True  # a unix socket: only local processes can connect
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def create_app(
    storage: StorageBackend | str = "memory",
    api_keys: Sequence[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    *,
    price: bool = True,
    alert_journal: str | os.PathLike[str] | None = None,
    metrics_access: str = "key",
    retention_days: int | None = None,
    retention_project_days: dict[str, int] | None = None,
    retention_interval_s: float = 3600.0,
) -> FastAPI:
    """The collector app over ``storage`` (a backend, or a name/URL for ``create_storage``;
    one it creates it also closes at shutdown).

    ``api_keys``: accepted ``Authorization: Bearer`` keys, compared in constant time. With
    none, only loopback clients are served (403 for others). ``max_body_bytes`` caps every
    request body, before and after gzip decompression (413 beyond). ``price``: records
    sent without a cost are priced from the prices kept in the storage (``/api/v1/prices``),
    then the offline price tables. ``alert_journal``: the
    journal file of budget alerts (None: alerts wait in memory only). ``metrics_access``:
    ``"key"`` (``/metrics`` answers only a key that may read: 401 otherwise; the open
    mode's loopback clients need none) or ``"public"`` (process metrics for anyone,
    stored totals for a reader). ``retention_days`` /
    ``retention_project_days``: apply retention (usageledger.retention) at start and every
    ``retention_interval_s`` while the app runs."""
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    if isinstance(api_keys, str):
        raise TypeError("api_keys must be a list of keys, not one string")
    keys = []
    for k in api_keys or ():
        # a header carries printable ASCII; any other key could never match
        if not isinstance(k, str) or not k.strip() or not (k.isascii() and k.isprintable()) or k != k.strip():
            raise ValueError(f"each API key must be a non-empty printable ASCII string without "
                             f"surrounding spaces, got {k!r}")
        keys.append(k.encode())
    if metrics_access not in ("public", "key"):
        raise ValueError(f"metrics_access must be 'public' or 'key', got {metrics_access!r}")
    owned = isinstance(storage, str)
    store: StorageBackend = create_storage(storage) if isinstance(storage, str) else storage
    if not isinstance(store, StorageBackend):
        raise TypeError(f"storage must be a StorageBackend or a storage URL, got {storage!r}")
    metrics = Metrics()
    usage_totals = UsageTotals(store)
    signer = SessionSigner(keys)
    limit = max_body_bytes
    retention = None
    if retention_days is not None or retention_project_days:
        from ..storage.retention import RetentionLoop

        if not getattr(store, "supports_retention", False):
            raise ValueError(f"retention needs a storage that supports it (sqlite, postgresql, "
                             f"memory), got {type(store).__name__}")
        retention = RetentionLoop(store, retention_days, retention_project_days, retention_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        budgets.start()
        if retention is not None:
            retention.start()
        yield
        if retention is not None:
            retention.stop()
        budgets.stop()
        if owned:
            store.close()

    app = FastAPI(
        title="usageledger collector",
        version="1",
        description="Receives LLM usage records and agent runs, exactly once per id; "
                    "answers queries, summaries, a dashboard and Prometheus metrics.",
        lifespan=lifespan,
        docs_url=None,  # served by install_pages from the package's own assets (no CDN)
        redoc_url=None,
    )
    app.state.storage = store
    app.state.metrics = metrics

    comps = schema.components()
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default_openapi()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(comps)
            if keys:
                spec["components"].setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http", "scheme": "bearer"}
                spec["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # -- errors ------------------------------------------------------------------------------
    @app.exception_handler(BodyError)
    async def _body_error(request: Request, exc: BodyError) -> Response:
        return json_response({"detail": exc.message}, exc.status)

    @app.exception_handler(StorageUnavailable)
    async def _unavailable(request: Request, exc: StorageUnavailable) -> Response:
        return json_response({"detail": f"storage unavailable: {exc}"}, 503, {"Retry-After": "1"})

    def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A storage call: bad arguments are the client's (422), a backend that lacks the
        feature is 501, anything else is the storage's failure (503, retry later)."""
        try:
            return fn(*args, **kw)
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, str(exc)) from None
        except NotImplementedError as exc:
            raise HTTPException(501, str(exc)) from None
        except Exception as exc:
            # shortened and escaped: a driver's message may quote the request's values
            log.warning("storage call %s failed: %s", getattr(fn, "__name__", fn), short(exc, 300))
            raise StorageUnavailable(f"{type(exc).__name__}: {str(exc)[:500]}") from None

    # -- auth (server/auth.py) ------------------------------------------------------------------
    key_sessions = KeySessions(store, signer.ttl_s)

    def session_principal(request: Request) -> Principal | None:
        # a browser session from the login page: reads only (SameSite=Strict); a project
        # key's session reads its project only
        cookie = request.cookies.get(COOKIE_NAME)
        if signer.verify(cookie):
            return Principal("admin", session=True)
        return key_sessions.principal(cookie)

    auth = Authenticator(
        store, keys, session_principal,
        lambda request: _is_loopback(request.client.host if request.client else None))
    app.state.auth = auth

    def authorize(request: Request) -> Principal:
        return call_auth(auth.authorize, request)

    def call_auth(fn: Callable[..., Any], request: Request) -> Any:
        try:
            return fn(request)
        except HTTPException:
            raise
        except Exception as exc:  # the key store failed: not the caller's fault
            log.warning("API key lookup failed: %s", short(exc, 300))
            raise StorageUnavailable(f"{type(exc).__name__} while checking the API key") from None

    async def authorized(request: Request) -> None:
        # a stored key is read from storage, off the event loop; a global key or the open
        # mode needs no threadpool hop
        if request.headers.get("authorization", "").partition(" ")[2].strip().startswith(TOKEN_PREFIX) or (
                request.cookies.get(COOKIE_NAME, "").startswith(KeySessions.PREFIX)):
            await run_in_threadpool(authorize, request)
        else:
            authorize(request)

    def project_of(request: Request) -> str | None:
        """The project a write goes to: a project key's own, or a global key's ?project=."""
        # (no query string, no parsing of one: the common /track)
        project = request.query_params.get("project") if request.scope.get("query_string") else None
        if project:
            from .auth import check_project
            try:
                check_project(project, "the query parameter project")
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
        return principal_of(request).scope(project)

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authorized)])
    budget_router, budgets = budget_routes.attach(store, alert_journal, authorize, call)
    app.state.budgets = budgets
    app.include_router(key_routes.attach(store, authorized, call))
    price_router, app.state.prices = price_routes.attach(store, authorize, call)
    # the ingestion rules: pricing (overrides, then aliases, then the table), dedup
    # accounting, the answer, run sequences; the routes below only read and answer
    collector = Collector(store, price=price, prices=app.state.prices, metrics=metrics,
                          on_stored=budgets.note, call=call)
    app.state.collector = collector

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise BodyError(400, f"Content-Length must be an integer, got {length!r}") from None
            if declared > limit:
                raise BodyError(413, f"the body ({declared} bytes) is larger than the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"the body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            return read_gzip(data, limit)
        if encoding not in ("", "identity"):
            raise BodyError(415, f"Content-Encoding {encoding!r} is not supported: use gzip or none")
        return data

    # -- usage records -----------------------------------------------------------------------
    def ingest(data: bytes, project: str | None) -> dict[str, Any]:
        items = decode_track(data)
        if project is not None:  # the key's project, whatever the body says
            for it in items:  # (records just decoded, ours to change: no copy of each)
                if type(it) is UsageRecord:
                    it.tags = {**it.tags, PROJECT_TAG: project}
        return collector.ingest(items)

    @api.post(
        "/track",
        summary="Store a batch of usage records",
        openapi_extra=schema.body("TrackBody"),
        responses={200: schema.response("TrackResponse", "counts, and one result per item when "
                                                         "some were rejected"),
                   400: schema.ERROR, 401: schema.ERROR, 413: schema.ERROR},
    )
    async def track(request: Request) -> Response:
        """Body `{"tracked": [record, ...]}` (gzip allowed). When every item was stored
        (`accepted` now, or `duplicate`: its id was stored already) the answer is compact:
        `{"accepted": n, "duplicate": m, "duplicate_ids": [...]}`. When some item was
        `rejected`, every item is answered in order in `results` (with `error` for the
        rejected ones; the other items are still stored)."""
        data = await read_body(request)
        return json_response(await run_in_threadpool(ingest, data, project_of(request)))

    @api.get("/usage", summary="Stored usage records, newest first")
    def usage(
        f: Filters,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Response:
        def encode_row(r: UsageRecord) -> bytes:
            # (replace does not type-check: the cost is encoded as the plain string)
            return encode(r if r.cost is None else msgspec.structs.replace(r, cost=plain(r.cost)))

        parts, more = _page(lambda n, at: call(store.query, limit=n, offset=at, **f),
                            limit, offset, _RECORDS_CHUNK, encode_row)
        # retention folds older records into daily rollups: listings hold raw records only
        since = call(raw_since, store, (f.get("tags") or {}).get(PROJECT_TAG))
        tail = encode({"limit": limit, "offset": offset,
                       "next_offset": offset + len(parts) if more else None,
                       "raw_since": None if since is None else from_us(since)})
        return Response(b'{"records":[' + b",".join(parts) + b"]," + tail[1:],
                        media_type="application/json")

    @api.get("/summary", summary="Totals grouped by day, hour, provider, model, ... (cost exact)")
    def summary(
        f: Filters,
        group_by: Annotated[str, Query(description="comma-separated: day, hour, provider, model, "
                                                   "user_id, session_id, customer_key, tag:<key>")] = "day",
    ) -> Response:
        try:
            keys = check_group_by(group_by)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        if len(set(keys)) != len(keys):
            raise HTTPException(422, f"group_by repeats a key: {group_by!r}")
        _refuse_nul({"group_by": group_by})
        groups = call(store.aggregate, keys, **f)
        # per currency: money is never added across currencies
        totals = Totals.of_rows(groups).to_dict(plain=True)
        for g in groups:
            g["cost"] = plain(g["cost"])
        return json_response({"group_by": list(keys), "groups": groups, "totals": totals})

    # -- agent runs --------------------------------------------------------------------------
    def own_runs(project: str | None, run_ids: list[str]) -> None:
        """A project key writes only its project's runs (run ids are one namespace)."""
        if project is None:
            return
        for run_id in set(run_ids):
            run = call(store.get_run, run_id)
            if run is not None and run.get("project") != project:
                raise HTTPException(409, f"run {run_id!r} belongs to another project")

    def with_project(fields: dict[str, Any], project: str | None) -> dict[str, Any]:
        return fields if project is None else {**fields, "project": project}

    @api.post(
        "/runs",
        summary="Create an agent run (idempotent on run_id)",
        status_code=201,
        openapi_extra=schema.body("RunIn"),
        responses={201: schema.response("RunWriteResponse", "created"),
                   200: schema.response("RunWriteResponse", "updated (newer seq) or duplicate"),
                   400: schema.ERROR, 422: schema.ERROR},
    )
    async def create_run(request: Request) -> Response:
        data = await read_body(request)
        try:
            run_id, seq, fields = decode_run(data)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        project = project_of(request)
        await run_in_threadpool(own_runs, project, [run_id])
        status = await run_in_threadpool(collector.create_run, run_id, seq, with_project(fields, project))
        return json_response({"run_id": run_id, "status": status}, 201 if status == CREATED else 200)

    @api.patch(
        "/runs/{run_id:path}",
        summary="Update fields of an agent run",
        openapi_extra=schema.body("RunPatch"),
        responses={200: schema.response("RunWriteResponse", "updated, or stale (not newer)"),
                   404: schema.ERROR, 422: schema.ERROR},
    )
    async def update_run(run_id: str, request: Request) -> Response:
        data = await read_body(request)
        try:
            seq, fields = decode_run_patch(data, run_id)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        _refuse_nul({"run_id": run_id})
        project = project_of(request)
        await run_in_threadpool(own_runs, project, [run_id])
        status = await run_in_threadpool(collector.patch_run, run_id, seq, with_project(fields, project))
        if status == MISSING:
            raise HTTPException(404, f"no run {run_id!r}: create it with POST /api/v1/runs first")
        return json_response({"run_id": run_id, "status": status})

    @api.post(
        "/runs/batch",
        summary="Apply many run writes in order",
        openapi_extra=schema.body("RunBatch"),
        responses={200: schema.response("RunBatchResponse", "one result per write, in order"),
                   400: schema.ERROR},
    )
    async def runs_batch(request: Request) -> Response:
        """Each write answers `created`, `updated`, `duplicate` (a create that is not
        newer), `stale` (an update that is not newer), `missing` (an update of an unknown
        run: retry after its create) or `rejected` (with `error`)."""
        data = await read_body(request)
        items = decode_run_batch(data)
        project = project_of(request)
        if project is not None:
            await run_in_threadpool(own_runs, project, [it.run_id for it in items if it.error is None])
            for it in items:
                if it.error is None:
                    it.fields = with_project(it.fields or {}, project)
        return json_response({"results": await run_in_threadpool(collector.apply_runs, items)})

    @api.get("/runs/{run_id:path}", summary="One agent run")
    def get_run(run_id: str, request: Request, project: str | None = None) -> Response:
        _refuse_nul({"run_id": run_id})
        scope = principal_of(request).scope(project)
        run = call(store.get_run, run_id)
        if run is None or (scope is not None and run.get("project") != scope):
            raise HTTPException(404, f"no run {run_id!r}")
        return json_response(run)

    @api.get("/runs", summary="Agent runs, newest start_time first")
    def list_runs(
        request: Request,
        project: str | None = None,
        agent_name: str | None = None,
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Response:
        _refuse_nul({"agent_name": agent_name, "status": status})
        parts, more = _page(
            lambda n, at: call(store.query_runs, agent_name=agent_name or None,
                               status=status or None, limit=n, offset=at,
                               project=principal_of(request).scope(project)),
            limit, offset, _RUNS_CHUNK, encode)
        tail = encode({"limit": limit, "offset": offset,
                        "next_offset": offset + len(parts) if more else None})
        return Response(b'{"runs":[' + b",".join(parts) + b"]," + tail[1:],
                        media_type="application/json")

    app.include_router(api)
    app.include_router(budget_router)
    app.include_router(price_router)

    # -- service -----------------------------------------------------------------------------
    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/metrics", summary="Prometheus text exposition", response_class=Response)
    def prometheus(request: Request) -> Response:
        """Process metrics for anyone; stored tokens and cost by provider and model only for
        a caller that could read them through the API (a plain def: they come from storage,
        off the event loop)."""
        try:
            who = authorize(request)
        except HTTPException:
            if metrics_access == "key":
                raise
            who = None
        usage: UsageTotals | None = None
        if who is not None:
            project = who.scope(request.query_params.get("project"))
            usage = usage_totals if project is None else UsageTotals(store, project=project)
        return Response(metrics.render(usage), media_type=CONTENT_TYPE_LATEST)

    install_pages(
        app, store=store, call=call, signer=signer,
        open_access=lambda request: _is_loopback(request.client.host if request.client else None),
        counters=metrics.record_counts,
        budget_statuses=None if budgets.engine is None else budgets.engine.list,
        auth=auth,
    )
    # the last added is the outermost: security headers on every answer, then the metrics,
    # then the direct /track (so it is timed and labelled like every other route)
    app.add_middleware(DirectPost, route=next(r for r in api.routes if r.path == "/api/v1/track"),
                       endpoint=track, dependency=authorized)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


class DirectPost:
    """Pure ASGI: a ``POST`` to ``route.path`` goes straight to ``endpoint(request)`` after
    ``await dependency(request)`` (the route's own function and its router's dependency),
    without FastAPI's route matching and dependency solving; an error is answered by the
    app's own exception handlers, as on every route. The route stays declared in the
    FastAPI app (its OpenAPI entry, 405 for other methods). ``/track`` carries every usage
    record: a one-record POST called in-process took a median 493 µs of CPU through the
    router and 344 µs this way (of which some 110 µs is the hop to the threadpool, which
    stays: the storage call must not block the event loop), 1.5 µs per record at the
    client's default batch of 100 (docs/benchmarks.md)."""

    def __init__(self, app: Any, route: Any, endpoint: Callable[[Request], Any],
                 dependency: Callable[[Request], Any]):
        self.app = app
        self.route = route
        self.path = route.path
        self.endpoint = endpoint
        self.dependency = dependency

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the metrics' label, as the router sets it
        request = Request(scope, receive)
        try:
            await self.dependency(request)
            response = await self.endpoint(request)
        except Exception as exc:
            handler = _handler(scope["app"], exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler(app: FastAPI, exc: Exception) -> Callable[..., Any] | None:
    """The app's exception handler for ``exc`` (the nearest class in its MRO), as
    Starlette's exception middleware looks it up."""
    for cls in type(exc).__mro__:
        if cls in app.exception_handlers:
            return app.exception_handlers[cls]
    return None


def _filters(
    request: Request,
    project: Annotated[str | None, Query(description="a global key's choice of project; a "
                                                     "project key reads only its own")] = None,
    provider: str | None = None,
    model: str | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
    customer_key: str | None = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive; naive means UTC")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    tag: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
) -> dict[str, Any]:
    """The usage filters as query parameters, checked."""
    # an empty value (`?user_id=`, as an HTML form sends a blank field) is no filter
    out: dict[str, Any] = {"provider": provider or None, "model": model or None,
                           "user_id": user_id or None, "session_id": session_id or None,
                           "customer_key": customer_key or None}
    for name, when in (("since", since), ("until", until)):
        if when is not None:
            try:
                out[name] = to_utc(when)
            except OverflowError:
                raise HTTPException(422, f"{name} is out of range: {when!r}") from None
    if tag:
        tags = {}
        for t in tag:
            key, sep, value = t.partition(":")
            if not sep or not key:
                raise HTTPException(422, f"tag must look like key:value, got {t!r}")
            tags[key] = value
        out["tags"] = tags
    _refuse_nul(out)
    scope = principal_of(request).scope(project)
    if scope is not None:  # a tag filter: every backend and rollup answers it already
        out["tags"] = {**out.get("tags", {}), PROJECT_TAG: scope}
    return out


Filters = Annotated[dict[str, Any], Depends(_filters)]


def _refuse_nul(values: dict[str, Any]) -> None:
    """PostgreSQL text cannot hold NUL; refuse it in every backend alike."""
    for name, value in values.items():
        if isinstance(value, str) and "\x00" in value:
            raise HTTPException(422, f"{name} contains a NUL character")
        if isinstance(value, dict) and any("\x00" in k + v for k, v in value.items()):
            raise HTTPException(422, f"{name} contains a NUL character")


#: what ``serve(workers=N)`` hands to its worker processes (each builds its own app)
STORAGE_ENV = "USAGELEDGER_SERVER_STORAGE"
MAX_BODY_ENV = "USAGELEDGER_SERVER_MAX_BODY_BYTES"
ALERT_JOURNAL_ENV = "USAGELEDGER_SERVER_ALERT_JOURNAL"
METRICS_ENV = "USAGELEDGER_SERVER_METRICS"
RETENTION_ENV = "USAGELEDGER_SERVER_RETENTION"
#: stores that several processes can share: one file with a writer lock, or a server
_SHARED_STORES = ("sqlite", "postgres", "postgresql", "redis", "rediss")
#: seconds a worker may take to answer its supervisor's health check
WORKER_HEALTHCHECK_S = 60


def serve(
    storage: StorageBackend | str = "sqlite:///usageledger.db",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    api_keys: Sequence[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "info",
    alert_journal: str | os.PathLike[str] | None = None,
    workers: int = 1,
    metrics_access: str = "key",
    retention_days: int | None = None,
    retention_project_days: dict[str, int] | None = None,
) -> None:
    """Run the collector under uvicorn until interrupted. Keys default to the comma-separated
    ``USAGELEDGER_SERVER_API_KEYS``; with none, only loopback clients are served.

    ``workers`` > 1 runs that many processes on one port (uvicorn's supervisor binds the
    socket; the kernel spreads connections over the processes). Each opens ``storage``
    (a URL) itself: SQLite (one writer at a time, transactions queue on the file lock),
    PostgreSQL or Redis; memory and JSONL stores are refused (every process would keep its
    own)."""
    import uvicorn

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not api_keys:
        api_keys = keys_from_env() or None
    if workers > 1:
        scheme = storage.partition(":")[0].lower() if isinstance(storage, str) else ""
        if scheme not in _SHARED_STORES:
            raise ValueError(
                f"--workers {workers} needs a storage URL that several processes can share "
                f"(sqlite:///..., postgresql://..., redis://...), got {storage!r}")
    if alert_journal is None:
        alert_journal = default_alert_journal(storage)
    app = create_app(storage, api_keys=api_keys, max_body_bytes=max_body_bytes,
                     alert_journal=alert_journal, metrics_access=metrics_access,
                     retention_days=retention_days, retention_project_days=retention_project_days)
    # the collector's own logs (storage failures, this warning) in uvicorn's format
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    if not api_keys:
        log.warning(
            "NO API KEY CONFIGURED: this collector serves ONLY loopback clients (127.0.0.1, ::1) "
            "and answers 403 to everyone else (but a project key's holder). Start it with --api-key-file PATH (or set %s) "
            "before exposing it%s.", API_KEYS_ENV,
            f" (it listens on {host})" if not _is_loopback_host(host) else "",
        )
    if workers == 1:
        tune_gc()
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
        return
    # the app above checked the arguments and migrated the schema once, before the workers
    # start; each worker (a fresh interpreter) builds its own from the environment
    app.state.storage.close()
    os.environ[STORAGE_ENV] = storage  # type: ignore[assignment]
    os.environ[MAX_BODY_ENV] = str(max_body_bytes)
    os.environ[API_KEYS_ENV] = ",".join(api_keys or ())
    os.environ[ALERT_JOURNAL_ENV] = "" if alert_journal is None else os.fspath(alert_journal)
    os.environ[METRICS_ENV] = metrics_access
    # every worker runs the retention loop: batches are transactions, the store serializes them
    os.environ[RETENTION_ENV] = msgspec.json.encode(
        {"days": retention_days, "projects": retention_project_days or {}}).decode()
    # the supervisor pings each worker every 0.5 s and kills one that does not answer in
    # time; a worker answers only once its interpreter has started, which took over
    # uvicorn's default 5 s on a loaded 2-core machine (the worker was killed and
    # restarted before serving): a worker is given a minute
    uvicorn.run("usageledger.server.app:app_from_env", factory=True, workers=workers,
                host=host, port=port, log_level=log_level, access_log=False,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)


def app_from_env() -> FastAPI:
    """The app of one ``serve(workers=N)`` worker, from what ``serve`` put in the
    environment."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    keys = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    # every worker queues the alerts it claims in the one alert journal (a shared SQLite
    # journal: one dispatcher at a time delivers them)
    retention = msgspec.json.decode(os.environ.get(RETENTION_ENV) or '{"days": null, "projects": {}}')
    app = create_app(os.environ[STORAGE_ENV], api_keys=keys or None,
                     max_body_bytes=int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES)),
                     alert_journal=os.environ.get(ALERT_JOURNAL_ENV) or None,
                     metrics_access=os.environ.get(METRICS_ENV) or "key",
                     retention_days=retention["days"], retention_project_days=retention["projects"] or None)
    tune_gc()
    return app


#: net allocations of tracked objects between two collections of the youngest generation
#: in a collector process (CPython's default is 700)
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """The garbage collector of a process that serves the collector (``serve``, each
    worker): what is alive once the app is built (modules, the app and its routes: some
    70,000 objects) is frozen out of every later collection, and the youngest generation
    is collected after GC_YOUNG_THRESHOLD net allocations rather than 700, so a batch's
    records are mostly freed by their reference counts before a collection sees them.
    A batch of 1,000 records made 5 young collections, and every 20-25 batches a full one
    walked the whole heap (75-90 ms): in a collector process on SQLite, 4.6 to 7.1 µs per
    record went to garbage collection, 1.2 to 2.1 µs with this (docs/benchmarks.md).
    Only a process the collector owns calls this: an app built inside another program
    leaves that program's collector alone."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _is_loopback_host(host: str) -> bool:
    return host in ("localhost",) or _is_loopback(host)



def default_alert_journal(storage: StorageBackend | str) -> Path | None:
    """Where ``serve`` keeps budget alerts by default: beside a SQLite store
    (``usage.db`` -> ``usage.alerts.journal``), in the user data directory for other
    stores, nowhere (memory) for a memory store."""
    from ..core.pipeline import default_journal_path
    from ..storage import _file_path

    if not isinstance(storage, str):
        where = getattr(storage, "db_path", None)
        return None if where is None else Path(where).with_suffix(".alerts.journal")
    lowered = storage.strip().lower()
    if lowered.startswith("memory"):
        return None
    if lowered.startswith("sqlite://"):
        return Path(_file_path(storage.strip(), "sqlite", {}, ())).with_suffix(".alerts.journal")
    return default_journal_path("collector-alerts.journal")
