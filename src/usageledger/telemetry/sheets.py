"""Google Sheets export (optional, off by default): finished runs appended as rows with
the Sheets v4 call ``POST /v4/spreadsheets/{id}/values/{range}:append?valueInputOption=RAW``.

Auth: a bearer token, or a service-account JSON key whose RS256-signed JWT is exchanged
at its ``token_uri`` for an access token (cached until a minute before it expires).
Signing needs PyJWT with cryptography (``pip install 'usageledger[sheets]'``), imported
only when a service account is used.

The export has its own pipeline and journal, so its failures never block or fail a run
nor delay the other destinations. Appends are not idempotent on Google's side: a retry
after a lost answer can add a row twice; every row starts with its ``run_id``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import msgspec

from ..core.sink import OK, Result, Retry, all_results, decode_batch
from ..schema.records import KIND_RUN
from ..schema.runs import SHEET_COLUMNS, APIPayload, RunWrite
from ..sinks.http import HttpSink
from .config import ConfigError, sheets_url_problem

if TYPE_CHECKING:
    from ..core.journal.base import JournalItem

log = logging.getLogger("usageledger.telemetry.sheets")

__all__ = ["SheetsSink", "ServiceAccountAuth", "SHEETS_SCOPE", "SHEET_COLUMNS"]

SHEETS_SCOPE = "https://www.googleapis.com/auth/spreadsheets"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
_decode_write = msgspec.json.Decoder(RunWrite).decode


class ServiceAccountAuth:
    """OAuth 2.0 JWT bearer grant for a Google service account (RFC 7523)."""

    def __init__(self, info: dict[str, Any] | str | os.PathLike[str], *, allow_insecure_local: bool = False):
        source = "argument"
        if not isinstance(info, dict):
            source = f"credentials file {info}"
            try:
                with open(info, encoding="utf-8") as f:
                    info = json.load(f)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"sheets_credentials_file={str(info)!r} cannot be read: {exc}") from None
        if not isinstance(info, dict):
            raise ConfigError(f"{source} must hold a JSON object (a service-account key)")
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if missing:
            raise ConfigError(f"{source} lacks {', '.join(missing)}: not a service-account key")
        self.client_email: str = info["client_email"]
        self._private_key: str = info["private_key"]
        self.token_uri: str = info.get("token_uri") or DEFAULT_TOKEN_URI
        if not allow_insecure_local:
            problem = sheets_url_problem("token_uri", self.token_uri, source)
            if problem:
                raise ConfigError(problem)
        try:
            import jwt  # noqa: F401  (PyJWT; RS256 also needs cryptography)
        except ImportError:
            raise ConfigError(
                "a service-account key needs PyJWT and cryptography: pip install 'usageledger[sheets]'"
            ) from None
        self._token: str | None = None
        self._expires = 0.0

    def assertion(self, now: float | None = None) -> str:
        import jwt

        iat = int(time.time() if now is None else now)
        claims = {"iss": self.client_email, "scope": SHEETS_SCOPE, "aud": self.token_uri,
                  "iat": iat, "exp": iat + 3600}
        return jwt.encode(claims, self._private_key, algorithm="RS256")

    def token(self, http: httpx.Client) -> str:
        """A valid access token, fetched at the token URI when missing or about to expire."""
        if self._token is not None and time.time() < self._expires - 60:
            return self._token
        resp = http.post(
            self.token_uri,
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                  "assertion": self.assertion()},
            # the sink's client defaults to JSON; the token endpoint takes a form
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if resp.status_code != 200:
            raise RuntimeError(f"token URI {self.token_uri} answered HTTP {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        self._token = body["access_token"]
        self._expires = time.time() + float(body.get("expires_in", 3600))
        return self._token  # type: ignore[return-value]

    def invalidate(self) -> None:
        self._token = None


class SheetsSink(HttpSink):
    """Run writes -> rows of :data:`SHEET_COLUMNS` (see ``APIPayload.to_row``)."""

    name = "sheets"
    #: rows are appended in the order runs end, and the service-account token is
    #: refreshed by one sender at a time: one request in flight
    concurrent_sends = False

    def __init__(
        self,
        spreadsheet_id: str,
        range_: str = "Sheet1!A1",
        *,
        api_url: str = "https://sheets.googleapis.com",
        token: str | None = None,
        credentials: dict[str, Any] | str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        allow_insecure_local: bool = False,
    ):
        if not spreadsheet_id:
            raise ConfigError("the Sheets export needs a spreadsheet id")
        if not token and credentials is None:
            raise ConfigError("the Sheets export needs a bearer token or service-account credentials")
        if not allow_insecure_local:
            problem = sheets_url_problem("sheets_api_url", api_url, "argument")
            if problem:
                raise ConfigError(problem)
        super().__init__(api_url, "/v4", timeout=timeout, compress=None)
        self.append_url = (
            f"{self.base}/spreadsheets/{quote(spreadsheet_id, safe='')}"
            f"/values/{quote(range_, safe='!:')}:append"
        )
        self._static_token = token
        self._auth = None if token else ServiceAccountAuth(credentials, allow_insecure_local=allow_insecure_local)  # type: ignore[arg-type]

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        decoded, results = decode_batch(
            batch, KIND_RUN, _decode_write, taker="the Sheets export", noun="run write"
        )
        rows: list[list[Any]] = [APIPayload.from_run_record(w).to_row() for _, w in decoded]
        ids = [i for i, _ in decoded]
        if not rows:
            return results
        sent = [item for item in batch if item.id not in results]
        http = self._client()
        try:
            token = self._static_token or self._auth.token(http)  # type: ignore[union-attr]
        except Exception as exc:  # the token endpoint is down or refuses: try later
            return {**results, **all_results(sent, Retry(None, f"no access token: {exc}"))}
        try:
            resp = http.post(
                self.append_url,
                params={"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"},
                json={"majorDimension": "ROWS", "values": rows},
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.HTTPError as exc:
            return {**results, **all_results(sent, Retry(None, f"network error: {exc!r}"))}
        if resp.status_code == 401 and self._auth is not None:
            self._auth.invalidate()  # expired early or revoked: fetch a new one next time
            return {**results, **all_results(sent, Retry(None, "HTTP 401: access token refused"))}
        out = self.results_from(sent, resp)
        if 200 <= resp.status_code < 300:
            out = {i: OK for i in ids}  # Sheets answers with the updated range, not ids
        return {**results, **out}
