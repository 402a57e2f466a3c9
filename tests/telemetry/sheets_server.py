"""A local stand-in for the Google Sheets v4 ``values:append`` endpoint and an OAuth token
endpoint that verifies service-account JWTs (RS256) with the account's public key."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_APPEND = re.compile(r"^/v4/spreadsheets/([^/]+)/values/(.+):append$")


class SheetsServer:
    def __init__(self, public_key_pem: bytes | None = None, token: str = "static-token"):
        self.lock = threading.Lock()
        self.rows: list[list[Any]] = []
        self.appends: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.valid_tokens = {token}
        self.fail_next: list[int] = []  # statuses to answer to the next append calls
        self.public_key_pem = public_key_pem
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, out = server.handle(self.path, dict(self.headers.items()), body)
                data = json.dumps(out).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.token_uri = self.url + "/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        parts = urlsplit(path)
        if parts.path == "/token":
            return self._token(headers, body)
        m = _APPEND.match(parts.path)
        if not m:
            return 404, {"error": {"code": 404, "message": f"no route {parts.path}"}}
        with self.lock:
            if self.fail_next:
                code = self.fail_next.pop(0)
                return code, {"error": {"code": code, "message": "injected"}}
            auth = headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
                return 401, {"error": {"code": 401, "message": "invalid credentials"}}
            query = parse_qs(parts.query)
            if query.get("valueInputOption") != ["RAW"]:
                return 400, {"error": {"code": 400, "message": "valueInputOption"}}
            doc = json.loads(body)
            self.rows.extend(doc["values"])
            self.appends.append({"spreadsheet": unquote(m.group(1)), "range": unquote(m.group(2)),
                                 "rows": len(doc["values"]), "token": auth[7:]})
            return 200, {"spreadsheetId": unquote(m.group(1)),
                         "updates": {"updatedRows": len(doc["values"])}}

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        import jwt

        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = jwt.decode(form["assertion"], self.public_key_pem, algorithms=["RS256"],
                                audience=self.token_uri)
        except Exception as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        with self.lock:
            self.token_requests.append(claims)
            token = f"access-{len(self.token_requests)}"
            self.valid_tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
