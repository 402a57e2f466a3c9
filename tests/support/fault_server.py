"""A fault-injecting collector for tests: a real threaded HTTP/1.1 server on 127.0.0.1.

    with FaultServer() as srv:
        srv.script(srv.status(503), srv.retry_after(1.0))   # the next two requests
        srv.default = srv.reject_ids(lambda rec: ..., "bad") # then every request
        ... srv.url, srv.stored_ids(), srv.received_ids(), srv.requests

Also runnable as a process: ``python -m tests.support.fault_server --port P --store FILE``
(prints the port; appends each newly stored record to FILE as a JSON line, fsynced).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    time: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    records: int = 0


@dataclass
class Behaviour:
    kind: str
    code: int = 200
    seconds: float = 0.0
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    pred: Callable[[dict], bool] | None = None
    error: str = "rejected"


class FaultServer:
    def __init__(self, port: int = 0, store_file: str | None = None):
        self.lock = threading.Lock()
        self.stored: dict[str, dict] = {}
        self.received: list[str] = []
        self.requests: list[Request] = []
        self.runs: dict[str, dict] = {}
        self._script: list[Behaviour] = []
        self.default = self.ok()
        self._store_fd = None if store_file is None else os.open(store_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add 40 ms per request

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

            do_PATCH = do_POST
            do_PUT = do_POST

            def do_GET(self) -> None:
                self._send(200, b'{"ok":true}')

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        ThreadingHTTPServer.daemon_threads = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- behaviours -------------------------------------------------------------------------
    @staticmethod
    def ok() -> Behaviour:
        return Behaviour("ok")

    @staticmethod
    def plain_ok() -> Behaviour:
        return Behaviour("plain_ok")

    @staticmethod
    def status(code: int, body: bytes | None = None, headers: dict[str, str] | None = None) -> Behaviour:
        return Behaviour("status", code=code, body=body, headers=headers or {})

    @staticmethod
    def retry_after(seconds: float, code: int = 429) -> Behaviour:
        return Behaviour("status", code=code, headers={"Retry-After": f"{seconds:g}"})

    @staticmethod
    def hang(seconds: float) -> Behaviour:
        return Behaviour("hang", seconds=seconds)

    @staticmethod
    def reset() -> Behaviour:
        return Behaviour("reset")

    @staticmethod
    def slow_body(seconds: float) -> Behaviour:
        return Behaviour("slow_body", seconds=seconds)

    @staticmethod
    def reject_ids(pred: Callable[[dict], bool] | set[str], error: str = "rejected") -> Behaviour:
        test = (lambda rec: rec.get("id") in pred) if isinstance(pred, set) else pred
        return Behaviour("reject", pred=test, error=error)

    @staticmethod
    def per_record() -> Behaviour:
        """Answer one result per record even when none was rejected (the older form)."""
        return Behaviour("per_record")

    @staticmethod
    def miscount() -> Behaviour:
        """Store the records but answer compact counts one short of the batch."""
        return Behaviour("miscount")

    @staticmethod
    def poison(pred: Callable[[dict], bool]) -> Behaviour:
        """A batch holding a matching record is refused whole: 400, no per-record results."""
        return Behaviour("poison", pred=pred)

    def script(self, *behaviours: Behaviour) -> None:
        with self.lock:
            self._script.extend(behaviours)

    # -- queries ----------------------------------------------------------------------------
    def stored_ids(self) -> set[str]:
        with self.lock:
            return set(self.stored)

    def received_ids(self) -> list[str]:
        with self.lock:
            return list(self.received)

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.stored_ids()) >= n:
                return True
            time.sleep(0.01)
        return False

    # -- handling ---------------------------------------------------------------------------
    def _next(self) -> Behaviour:
        with self.lock:
            return self._script.pop(0) if self._script else self.default

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        req = Request(time.time(), h.command, h.path, dict(h.headers.items()), raw)
        with self.lock:
            self.requests.append(req)
        b = self._next()
        if b.kind == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            req.status = -1
            return
        if b.kind == "hang":
            time.sleep(b.seconds)
        if b.kind == "status":
            req.status = b.code
            h._send(b.code, b.body if b.body is not None else b'{"detail":"injected"}', b.headers)  # type: ignore[attr-defined]
            return
        body = gzip.decompress(raw) if h.headers.get("Content-Encoding") == "gzip" else raw
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            req.status = 400
            h._send(400, b'{"detail":"malformed JSON"}')  # type: ignore[attr-defined]
            return
        records = doc.get("tracked") if isinstance(doc, dict) else None
        if records is None:
            records = doc.get("runs", [doc]) if isinstance(doc, dict) else doc
        req.records = len(records)
        if b.kind == "poison" and any(b.pred(r) for r in records):  # type: ignore[misc]
            req.status = 400
            h._send(400, b'{"detail":"batch refused"}')  # type: ignore[attr-defined]
            return
        results = []
        with self.lock:
            for rec in records:
                rid = rec.get("id") or rec.get("run_id")
                if b.kind == "reject" and b.pred(rec):  # type: ignore[misc]
                    results.append({"id": rid, "status": "rejected", "error": b.error})
                    continue
                self.received.append(rid)
                status = "duplicate" if rid in self.stored else "accepted"
                if status == "accepted":
                    self.stored[rid] = rec
                    if self._store_fd is not None:
                        os.write(self._store_fd, json.dumps(rec).encode() + b"\n")
                        os.fsync(self._store_fd)
                results.append({"id": rid, "status": status})
        req.status = 200
        if b.kind == "plain_ok":
            h._send(200, b"")  # type: ignore[attr-defined]
            return
        # as the collector answers: compact when nothing was rejected, else per record
        compact = h.path.endswith("/track") and b.kind != "per_record"
        if not compact or any(r["status"] == "rejected" for r in results) or not results:
            out = json.dumps({"results": results}).encode()
        else:
            dups = [r["id"] for r in results if r["status"] == "duplicate"]
            accepted = len(results) - len(dups) - (b.kind == "miscount")
            out = json.dumps({"accepted": accepted, "duplicate": len(dups),
                              "duplicate_ids": dups}).encode()
        if b.kind == "slow_body":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(out)))
            h.end_headers()
            step = b.seconds / max(len(out), 1)
            try:
                for i in range(len(out)):
                    h.wfile.write(out[i:i + 1])
                    h.wfile.flush()
                    time.sleep(step)
            except OSError:
                pass
            return
        h._send(200, out)  # type: ignore[attr-defined]

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._store_fd is not None:
            os.close(self._store_fd)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--store")
    args = ap.parse_args()
    srv = FaultServer(args.port, args.store).start()
    print(srv.port, flush=True)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
