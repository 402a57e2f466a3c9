"""The collector's browser-facing routes: login and logout, the dashboard views, the
local assets they use, and the API docs (``/docs``, ``/redoc``) served without any CDN.

API clients authenticate with ``Authorization: Bearer``; browsers log in once with a key
and carry a signed session cookie (``session.py``). With no key configured the collector
serves loopback clients only, and the pages need no login, as the API does."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..storage import StorageBackend
from ..storage._keys import PROJECT_TAG
from . import dashboard
from .auth import GLOBAL_ADMIN, TOKEN_PREFIX, Authenticator, KeySessions, Principal
from .session import COOKIE_NAME, SessionSigner

__all__ = ["install_pages", "SECURITY_HEADERS"]

#: sent with every page of ours
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: the API docs run the vendored Swagger UI / ReDoc scripts from /static, never inline ones
#: (ReDoc sets inline styles and starts a worker from a blob)
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
            "frame-ancestors 'none'; base-uri 'none'")
_LOGIN_MAX_BYTES = 8192


def _html(body: str, status: int = 200, csp: str = dashboard.PAGE_CSP) -> HTMLResponse:
    return HTMLResponse(body, status_code=status,
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": csp})


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return parts.path + ("?" + parts.query if parts.query else "")


def install_pages(
    app: FastAPI,
    *,
    store: StorageBackend,
    call: Callable[..., Any],
    signer: SessionSigner,
    open_access: Callable[[Request], bool],
    counters: Callable[[], dict[str, float]],
    budget_statuses: Callable[[], list[dict[str, Any]]] | None = None,
    session_secure: bool = False,
    auth: Authenticator | None = None,
) -> None:
    """Add the pages to ``app``. ``open_access(request)``: True when no key is configured
    and the client may be served without one (loopback); ``counters()``: this process's
    record counters for the delivery view; ``budget_statuses()``: every budget's status
    (None: the storage keeps no budgets). ``auth``: project keys may log in too; their
    session shows their project only (None: global keys only)."""
    started = time.monotonic()
    login_needed = signer.has_keys
    static_dir = resources.files("usageledger.server") / "static"
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    sessions = KeySessions(store, signer.ttl_s) if auth is not None else None
    project_keys = sessions is not None and bool(getattr(store, "supports_keys", False))

    def signed_in(request: Request) -> Principal | None:
        """The reader of a page: a project key's session, a global key's session, or the
        open mode's loopback client; None: not signed in."""
        cookie = request.cookies.get(COOKIE_NAME)
        if sessions is not None:
            p = call(sessions.principal, cookie)
            if p is not None:
                if not p.may("GET", "/"):
                    raise HTTPException(403, f"this {p.role} key may not read the dashboard")
                return p
        if not login_needed:
            if open_access(request):
                return GLOBAL_ADMIN
            if project_keys:
                return None  # a project key may log in
            raise HTTPException(403, "no API key is configured on this collector, so it serves "
                                     "only loopback clients: start it with --api-key")
        return GLOBAL_ADMIN if signer.verify(cookie) else None

    def to_login(request: Request) -> Response:
        target = request.url.path + ("?" + request.url.query if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303,
                                headers=SECURITY_HEADERS)

    def view(path: str, title: str, render: Callable[[dashboard.ViewFilters], str],
             extra: tuple[str, ...] = ()) -> None:
        def page(request: Request) -> Response:
            who = signed_in(request)
            if who is None:
                return to_login(request)
            frame_filters = None
            try:
                params = {k: v for k, v in request.query_params.items()}
                frame_filters = dataclasses.replace(dashboard.parse_filters(params, extra=extra),
                                                    project=who.project)
                body = render(frame_filters)
                status, error = 200, None
            except dashboard.FilterError as exc:
                body, status, error = "", 400, str(exc)
            frame = dashboard.Page(path, frame_filters or dashboard.parse_filters({}), login_needed)
            return _html(frame.render(title, body, error), status)

        page.__name__ = f"page_{title.lower()}"
        # the overview stays in the OpenAPI document as the dashboard's entry point
        app.add_api_route(path, page, methods=["GET"], include_in_schema=path == "/",
                          response_class=HTMLResponse,
                          summary="Dashboard (login page for browsers without a session)")

    def tag_keys(f: dashboard.ViewFilters) -> list[str]:
        """Tag keys of the latest matching records (a bounded sample, not a scan)."""
        seen: dict[str, int] = {}
        for r in call(store.query, limit=500, **f.storage_filters()):
            for k in r.tags:
                seen[k] = seen.get(k, 0) + 1
        return sorted(seen, key=lambda k: (-seen[k], k))[:3]

    def overview(f: dashboard.ViewFilters) -> str:
        return dashboard.overview(f, lambda keys, **flt: call(store.aggregate, keys, **flt),
                                  tag_keys(f))

    def records(f: dashboard.ViewFilters) -> str:
        rows = call(store.query, limit=dashboard.PAGE_ROWS + 1,
                    offset=f.page * dashboard.PAGE_ROWS, **f.storage_filters())
        return dashboard.records_page(f, rows[:dashboard.PAGE_ROWS], len(rows) > dashboard.PAGE_ROWS)

    def runs(f: dashboard.ViewFilters) -> str:
        try:
            rows = call(store.query_runs, agent_name=f.extra.get("agent_name"),
                        status=f.extra.get("status"), limit=dashboard.PAGE_ROWS + 1,
                        offset=f.page * dashboard.PAGE_ROWS, project=f.project)
        except HTTPException as exc:
            if exc.status_code != 501:
                raise
            return '<p class="muted">This storage backend does not keep agent runs.</p>'
        return dashboard.runs_page(f, rows[:dashboard.PAGE_ROWS], len(rows) > dashboard.PAGE_ROWS)

    def health(f: dashboard.ViewFilters) -> str:
        try:
            stored = (call(store.count) if f.project is None else  # the project's records only
                      sum(r["count"] for r in call(store.aggregate, (), tags={PROJECT_TAG: f.project})))
        except HTTPException:
            stored = None
        return dashboard.health_page(counters(), time.monotonic() - started, stored)

    view("/", "Overview", overview)
    view("/records", "Records", records)
    view("/runs", "Runs", runs, extra=("agent_name", "status"))
    def budgets(f: dashboard.ViewFilters) -> str:
        statuses = None if budget_statuses is None else call(budget_statuses)
        if statuses is not None and f.project is not None:  # the project's budgets only
            statuses = [b for b in statuses
                        if ((b.get("scope") or {}).get("tags") or {}).get(PROJECT_TAG) == f.project]
        return dashboard.budgets_page(statuses)

    view("/budgets", "Budgets", budgets)
    view("/health", "Delivery", health)

    @app.get("/login", include_in_schema=False, response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        if not login_needed and (not project_keys or open_access(request)):
            return RedirectResponse(_safe_next(next), status_code=303, headers=SECURITY_HEADERS)
        return _html(dashboard.login_page(None, _safe_next(next)))

    @app.post("/login", include_in_schema=False, response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > _LOGIN_MAX_BYTES:
            return _html(dashboard.login_page("That form is too large.", "/"), 413)
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        given = (form.get("api_key") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])
        cookie = None
        if given.startswith(TOKEN_PREFIX) and sessions is not None:
            row = await run_in_threadpool(_stored_row, given)
            cookie = None if row is None else sessions.issue(row)
        elif given and given.isascii():
            key = signer.key_for(given.encode())
            cookie = None if key is None else signer.issue(key)
        if cookie is None:
            return _html(dashboard.login_page("That API key is not valid.", target), 401)
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE_NAME, cookie, max_age=signer.ttl_s, httponly=True,
                            samesite="strict", secure=session_secure, path="/")
        return response

    def _stored_row(token: str) -> dict[str, Any] | None:
        """The row of a valid, unrevoked, unexpired project key that may read, or None."""
        assert auth is not None
        try:
            p = auth.stored(token)
        except HTTPException:
            return None
        return call(store.get_key, p.key_id) if p.may("GET", "/") else None

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def swagger(request: Request) -> Response:
        return _html(
            '<!doctype html><html><head><meta charset="utf-8"><title>usageledger API</title>'
            '<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css"></head><body>'
            '<div id="swagger-ui"></div>'
            '<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>'
            '<script src="/static/swagger-init.js"></script></body></html>', csp=DOCS_CSP)

    @app.get("/redoc", include_in_schema=False, response_class=HTMLResponse)
    def redoc(request: Request) -> Response:
        return _html(
            '<!doctype html><html><head><meta charset="utf-8"><title>usageledger API</title>'
            '</head><body><redoc spec-url="/openapi.json"></redoc>'
            '<script src="/static/vendor/redoc/redoc.standalone.js"></script></body></html>',
            csp=DOCS_CSP)
