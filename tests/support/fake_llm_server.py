"""A fake LLM provider for tests and benchmarks: a real threaded HTTP/1.1 server on
127.0.0.1 speaking the OpenAI (Chat Completions, Responses, Embeddings, Azure deployment
paths) and Anthropic (Messages) wire formats, JSON and SSE streams.

    with FakeLLMServer() as srv:
        OpenAI(base_url=srv.openai_url, api_key="k", max_retries=0)
        Anthropic(base_url=srv.url, api_key="k", max_retries=0)
        srv.requests   # every request seen: path, headers, JSON body

The usage answered is fixed per API (the ``*_USAGE`` constants below), so tests know the
exact tokens; ``srv.answers[model] = Answer(usage=..., extra=..., model=...)`` makes the
chat and messages APIs answer a requested model with other usage (audio tokens, 1-hour
cache writes...), extra top-level fields (``service_tier``) and the model name as given. The model answered is the requested one with a date suffix
(:data:`RESPONSE_MODEL`): a record must carry the response's model. A requested model
``fail-500`` gets a 500 with a provider-shaped error body. Streams are written one event
per chunk of an HTTP chunked body; a client that goes away mid-stream is fine.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAIL_MODEL = "fail-500"
#: an Anthropic stream that sends message_start, then an error event
MIDSTREAM_FAIL_MODEL = "fail-midstream"
SUFFIX = "-2024-08-06"
TEXT = ("Hel", "lo", " wor", "ld")

CHAT_USAGE = {"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
              "prompt_tokens_details": {"cached_tokens": 400, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 120, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0,
                                            "rejected_prediction_tokens": 0}}
RESPONSES_USAGE = {"input_tokens": 500, "input_tokens_details": {"cached_tokens": 100},
                   "output_tokens": 900, "output_tokens_details": {"reasoning_tokens": 640},
                   "total_tokens": 1400}
EMBEDDING_USAGE = {"prompt_tokens": 8, "total_tokens": 8}
ANTHROPIC_USAGE = {"input_tokens": 50, "output_tokens": 200, "cache_read_input_tokens": 3000,
                   "cache_creation_input_tokens": 700}

#: token counts a record of each API must have (usageledger convention: input excludes cache)
EXPECTED = {
    "chat": {"input_tokens": 600, "output_tokens": 300, "cache_read_tokens": 400,
             "cache_write_tokens": 0, "reasoning_tokens": 120},
    "responses": {"input_tokens": 400, "output_tokens": 900, "cache_read_tokens": 100,
                  "cache_write_tokens": 0, "reasoning_tokens": 640},
    "embeddings": {"input_tokens": 8, "output_tokens": 0, "cache_read_tokens": 0,
                   "cache_write_tokens": 0, "reasoning_tokens": 0},
    "anthropic": {"input_tokens": 50, "output_tokens": 200, "cache_read_tokens": 3000,
                  "cache_write_tokens": 700, "reasoning_tokens": 0},
}


def response_model(requested: str) -> str:
    """The model name the server answers for ``requested``."""
    return requested if requested.endswith(SUFFIX) else requested + SUFFIX


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client closing its pooled keep-alive connection is not an error worth a trace
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Answer:
    """What the chat and messages APIs answer for one requested model instead of the
    defaults: ``usage`` (the whole usage object), ``extra`` top-level response fields,
    ``model`` the model name answered (default: the requested one, without a suffix)."""

    usage: dict[str, Any]
    extra: dict[str, Any] | None = None
    model: str | None = None


class FakeLLMServer:
    def __init__(self, port: int = 0):
        self.lock = threading.Lock()
        self.requests: list[Seen] = []
        self.answers: dict[str, Answer] = {}
        self._ids = itertools.count(1)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add 40 ms per request

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self.httpd = _Server(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.openai_url = self.url + "/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="fake-llm-server")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # -- requests -------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.requests.append(Seen("POST", path, dict(h.headers), body))
        model = body.get("model") or ""
        if path.startswith("/openai/deployments/"):  # Azure: the deployment is in the path
            deployment = path.split("/")[3]
            model = model or deployment
            path = "/v1/" + path.split("/", 4)[4]
        if model == FAIL_MODEL:
            return self._json(h, 500, {"error": {"message": "the fake server fails on purpose",
                                                 "type": "server_error", "code": None}})
        answer = {
            "/v1/chat/completions": self._chat,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/messages": self._messages,
        }.get(path)
        if answer is None:
            return self._json(h, 404, {"error": {"message": f"no route {path}"}})
        special = self.answers.get(model)
        if special is not None and path in ("/v1/chat/completions", "/v1/messages"):
            return answer(h, body, special.model or model, special)
        answer(h, body, response_model(model))

    def _json(self, h: BaseHTTPRequestHandler, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-request-id", "req_fake")
        h.send_header("request-id", "req_fake")
        h.end_headers()
        h.wfile.write(data)

    def _sse(self, h: BaseHTTPRequestHandler, events: list[tuple[str | None, Any]]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("x-request-id", "req_fake")
        h.send_header("request-id", "req_fake")
        h.end_headers()
        try:
            for name, data in events:
                text = data if isinstance(data, str) else json.dumps(data)
                chunk = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
                payload = chunk.encode()
                h.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client stopped reading: fine

    # -- OpenAI -----------------------------------------------------------------------------
    def _chat(self, h: BaseHTTPRequestHandler, body: dict, model: str, special: Answer | None = None) -> None:
        rid = self.next_id("chatcmpl-")
        base = {"id": rid, "created": 1_700_000_000, "model": model,
                "system_fingerprint": "fp_fake", **((special and special.extra) or {})}
        usage = special.usage if special else CHAT_USAGE
        if not body.get("stream"):
            return self._json(h, 200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "".join(TEXT), "refusal": None}}],
                "usage": usage})
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if with_usage else {}
        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[tuple[str | None, Any]] = [(None, {**chunk, **extra, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})]
        for piece in TEXT:
            events.append((None, {**chunk, **extra, "choices": [
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}]}))
        events.append((None, {**chunk, **extra, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        if with_usage:
            events.append((None, {**chunk, "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        self._sse(h, events)

    def _response(self, rid: str, model: str, status: str, usage: Any) -> dict:
        output = [] if status != "completed" else [{
            "type": "message", "id": "msg_out", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "".join(TEXT), "annotations": []}]}]
        return {"id": rid, "object": "response", "created_at": 1_700_000_000, "model": model,
                "status": status, "output": output, "parallel_tool_calls": True,
                "tool_choice": "auto", "tools": [], "usage": usage}

    def _responses(self, h: BaseHTTPRequestHandler, body: dict, model: str) -> None:
        rid = self.next_id("resp_")
        if not body.get("stream"):
            return self._json(h, 200, self._response(rid, model, "completed", RESPONSES_USAGE))
        seq = itertools.count()
        events: list[tuple[str | None, Any]] = []
        for kind in ("response.created", "response.in_progress"):
            events.append((kind, {"type": kind, "sequence_number": next(seq),
                                  "response": self._response(rid, model, "in_progress", None)}))
        item = {"type": "message", "id": "msg_out", "status": "in_progress",
                "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": "msg_out", "output_index": 0}
        events.append(("response.output_item.added", {
            "type": "response.output_item.added", "sequence_number": next(seq),
            "output_index": 0, "item": item}))
        events.append(("response.content_part.added", {
            "type": "response.content_part.added", "sequence_number": next(seq), **where,
            "content_index": 0, "part": part}))
        for piece in TEXT:
            events.append(("response.output_text.delta", {
                "type": "response.output_text.delta", "sequence_number": next(seq), **where,
                "content_index": 0, "delta": piece, "logprobs": []}))
        done_part = {**part, "text": "".join(TEXT)}
        events.append(("response.output_text.done", {
            "type": "response.output_text.done", "sequence_number": next(seq), **where,
            "content_index": 0, "text": "".join(TEXT), "logprobs": []}))
        events.append(("response.content_part.done", {
            "type": "response.content_part.done", "sequence_number": next(seq), **where,
            "content_index": 0, "part": done_part}))
        events.append(("response.output_item.done", {
            "type": "response.output_item.done", "sequence_number": next(seq),
            "output_index": 0, "item": {**item, "status": "completed", "content": [done_part]}}))
        events.append(("response.completed", {
            "type": "response.completed", "sequence_number": next(seq),
            "response": self._response(rid, model, "completed", RESPONSES_USAGE)}))
        self._sse(h, events)

    def _embeddings(self, h: BaseHTTPRequestHandler, body: dict, model: str) -> None:
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(
            inputs[0], int) else 1
        vector = [0.25, -0.5, 0.125]
        if body.get("encoding_format") == "base64":
            embedding: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            embedding = vector
        self._json(h, 200, {"object": "list", "model": model, "usage": EMBEDDING_USAGE,
                            "data": [{"object": "embedding", "index": i, "embedding": embedding}
                                     for i in range(count)]})

    # -- Anthropic --------------------------------------------------------------------------
    def _messages(self, h: BaseHTTPRequestHandler, body: dict, model: str, special: Answer | None = None) -> None:
        mid = self.next_id("msg_")
        usage = special.usage if special else ANTHROPIC_USAGE
        if not body.get("stream"):
            return self._json(h, 200, {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(TEXT)}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": usage, **((special and special.extra) or {})})
        start_usage = {**usage, "output_tokens": 1}
        start = ("message_start", {"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
        if model.startswith(MIDSTREAM_FAIL_MODEL):
            return self._sse(h, [start, ("error", {"type": "error", "error": {
                "type": "overloaded_error", "message": "Overloaded"}})])
        events: list[tuple[str | None, Any]] = [
            ("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": start_usage}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        for piece in TEXT:
            events.append(("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}}))
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": usage["output_tokens"]}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self._sse(h, events)


if __name__ == "__main__":  # pragma: no cover - by hand: python -m tests.support.fake_llm_server
    with FakeLLMServer(8788) as srv:
        print(srv.url, flush=True)
        threading.Event().wait()
