"""Security headers on every answer, and ``HEAD`` for every ``GET`` route.

Pure ASGI, like the metrics middleware: no per-request objects besides one wrapped
``send``. The pages set their own headers (``pages.SECURITY_HEADERS`` and a
Content-Security-Policy); this adds ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer`` to every other answer
(JSON, errors, static files), and the pages' strict policy to any HTML answer that set
none (a framework error page, say).

A ``HEAD`` request runs its ``GET`` route and the body is dropped (monitors and link
checkers probe ``/`` that way; a 405 looked like an outage)."""

from __future__ import annotations

from typing import Any

from .dashboard import PAGE_CSP
from .pages import SECURITY_HEADERS as PAGE_HEADERS

__all__ = ["SecurityHeadersMiddleware", "SECURITY_HEADERS"]

#: on every answer (Cache-Control stays the pages' own choice)
SECURITY_HEADERS = tuple((k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()
                         if k != "Cache-Control")


class SecurityHeadersMiddleware:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                if html and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                # the GET's Content-Length stays, as HEAD requires; the bytes do not
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_secured)
