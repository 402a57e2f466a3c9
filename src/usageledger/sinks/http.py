"""HttpSink: POST batches to the collector's wire (docs/collector.md). One request per
``send``; no retries and no sleeps here (the Dispatcher owns them)."""

from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
import zlib
from typing import Any

import httpx
import msgspec

from ..core.journal.base import JournalItem
from ..core.sink import OK, Reject, Result, Retry, Sink, all_results, describe_url
from ..schema.records import KIND_RUN, MISSING, REJECTED, STORED_RESULTS

log = logging.getLogger("usageledger.http")

#: statuses worth another try; every other 4xx is a refusal for good
RETRY_STATUSES = frozenset({408, 425, 429})
#: refusals that are about the request as a whole, not any one record
_NOT_RECORD_SPECIFIC = frozenset({401, 403, 404, 405})


class _Result(msgspec.Struct):
    id: str
    status: str
    error: str | None = None


class _Answer(msgspec.Struct):
    """Either form of the collector's answer: one result per item (``results``), or,
    when every item was stored, counts (``accepted``, ``duplicate``) and the ids of the
    duplicates."""

    results: list[_Result] = []
    accepted: int | None = None
    duplicate: int = 0
    duplicate_ids: list[str] = []


_decode_answer = msgspec.json.Decoder(_Answer).decode


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def gzip_bytes(body: bytes, level: int = 1) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container
    return c.compress(body) + c.flush()


class HttpSink(Sink):
    name = "http"
    #: send() may run in several dispatcher threads at once (httpx's pool is thread-safe)
    concurrent_sends = True

    def __init__(
        self,
        api_base: str,
        api_url: str = "/api/v1",
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        compress: str | None = "gzip",
        compress_level: int = 1,
        compress_min_bytes: int = 1024,
        body_logger: Any = None,
        headers: dict[str, str] | None = None,
    ):
        if compress not in ("gzip", None):
            raise ValueError(f"compress must be 'gzip' or None, got {compress!r}")
        self.base = api_base.rstrip("/") + "/" + api_url.strip("/")
        self.track_url = self.base.rstrip("/") + "/track"
        self.runs_url = self.base.rstrip("/") + "/runs/batch"
        self.timeout = timeout
        self.compress = compress
        self.compress_level = compress_level
        self.compress_min_bytes = compress_min_bytes
        self._body_logger = body_logger
        self._headers = {"Content-Type": "application/json", "User-Agent": "usageledger"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        if headers:
            self._headers.update(headers)
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self._pid = os.getpid()

    def _client(self) -> httpx.Client:
        if self._pid != os.getpid():
            self._http = None  # never use a connection that crossed a fork
            self._http_lock = threading.Lock()
            self._pid = os.getpid()
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self.timeout, headers=self._headers)
            return self._http

    @property
    def destination(self) -> str:
        return f"collector {describe_url(self.base)}"

    def url_for(self, kind: str) -> str:
        return self.runs_url if kind == KIND_RUN else self.track_url

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        # the dispatcher may mix kinds in one claim: one request per kind, results merged
        kinds = {item.kind for item in batch}
        if len(kinds) > 1:
            out: dict[str, Result] = {}
            for kind in kinds:
                out.update(self.send([item for item in batch if item.kind == kind]))
            return out
        envelope = b'{"runs":[' if batch[0].kind == KIND_RUN else b'{"tracked":['
        body = envelope + b",".join(item.data for item in batch) + b"]}"
        headers = {}
        if self.compress and len(body) >= self.compress_min_bytes:
            payload = gzip_bytes(body, self.compress_level)
            headers["Content-Encoding"] = "gzip"
        else:
            payload = body
        url = self.url_for(batch[0].kind)
        if self._body_logger is not None:
            self._body_logger("request", url, {**self._headers, **headers}, body)
        try:
            resp = self._client().post(url, content=payload, headers=headers)
        except httpx.TimeoutException as exc:
            return all_results(batch, Retry(None, f"timeout after {self.timeout}s: {exc!r}"))
        except httpx.HTTPError as exc:
            return all_results(batch, Retry(None, f"network error: {exc!r}"))
        if self._body_logger is not None:
            self._body_logger("response", url, dict(resp.headers), resp.content)
        return self.results_from(batch, resp)

    def results_from(self, batch: list[JournalItem], resp: httpx.Response) -> dict[str, Result]:
        code = resp.status_code
        if 200 <= code < 300:
            return self._per_record(batch, resp.content)
        reason = f"HTTP {code}: {resp.text[:500]}"
        if code in RETRY_STATUSES or code >= 500:
            return all_results(batch, Retry(parse_retry_after(resp.headers.get("Retry-After")), reason))
        # 413 and 400/422 refuse the batch without naming a record: let the dispatcher halve
        return all_results(batch, Reject(reason, whole_batch=code not in _NOT_RECORD_SPECIFIC))

    def _per_record(self, batch: list[JournalItem], content: bytes) -> dict[str, Result]:
        if not content.strip():
            return all_results(batch, OK)  # a plain 2xx: all accepted
        try:
            answer = _decode_answer(content)
        except msgspec.DecodeError:
            return all_results(batch, OK)  # 2xx with a body we do not know: it took them
        if not answer.results:
            if answer.accepted is None or answer.accepted + answer.duplicate == len(batch):
                return all_results(batch, OK)  # compact: every item stored (new or not)
            # counts that do not match the batch: settle nothing (a resend is harmless)
            return all_results(batch, Retry(None, (
                f"the collector answered for {answer.accepted + answer.duplicate} records "
                f"of the {len(batch)} sent")))
        out: dict[str, Result] = {}
        for r in answer.results:
            if r.status in STORED_RESULTS:
                out[r.id] = OK
            elif r.status == REJECTED:
                out[r.id] = Reject(r.error or "rejected by the collector")
            elif r.status == MISSING:
                # an update that arrived before its run's create: try again later
                out[r.id] = Retry(None, r.error or "run not created yet")
            else:
                out[r.id] = Retry(None, f"status {r.status!r}: {r.error or ''}")
        for item in batch:
            out.setdefault(item.id, Retry(None, "the collector's answer has no result for this id"))
        return out

    def close(self) -> None:
        if self._http is not None and self._pid == os.getpid():
            self._http.close()
        self._http = None
