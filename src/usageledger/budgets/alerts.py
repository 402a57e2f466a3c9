"""Alert delivery: a claimed alert is appended to our own journal and POSTed to its
webhook by the Dispatcher through :class:`WebhookSink`, so a webhook that is down gets the
alert later (backoff, Retry-After), and one that keeps refusing ends dead-lettered, where
``usageledger failed --db JOURNAL`` shows it.

Each alert carries an ``Idempotency-Key`` header (``budget|window_start|threshold``): a
receiver that sees a retry of a request it did take (its answer was lost) can tell.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from ..core.sink import OK, Reject, Result, Retry, Sink
from ..schema.records import encode, new_id
from ..sinks.http import RETRY_STATUSES, parse_retry_after

if TYPE_CHECKING:
    from ..core.journal.base import JournalItem
    from ..core.pipeline import Pipeline

__all__ = ["WebhookSink", "AlertSender", "KIND_ALERT"]

log = logging.getLogger("usageledger.budgets")

#: journal item kind of a budget alert: {"url", "key", "body"}
KIND_ALERT = "alert"

_decode = msgspec.json.decode


class WebhookSink(Sink):
    """POSTs each alert's ``body`` as JSON to its ``url``: 2xx is delivered, 408/425/429
    and 5xx (or no answer) are retried, any other status is refused for good. One request
    per item: alerts are few and their URLs differ."""

    name = "webhook"

    def __init__(self, *, timeout: float = 10.0):
        self.timeout = timeout
        self._http: httpx.Client | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None or self._pid != os.getpid():
                self._http = httpx.Client(timeout=self.timeout, headers={
                    "Content-Type": "application/json", "User-Agent": "usageledger-alerts"})
                self._pid = os.getpid()
            return self._http

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        return {item.id: self._send_one(item) for item in batch}

    def _send_one(self, item: JournalItem) -> Result:
        if item.kind != KIND_ALERT:
            return Reject(f"the webhook sink takes alerts, not {item.kind!r}")
        try:
            alert = _decode(item.data)
            url, key, body = alert["url"], alert["key"], alert["body"]
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            return Reject(f"not an alert: {exc}")
        try:
            resp = self._client().post(url, content=encode(body), headers={"Idempotency-Key": key})
        except httpx.TimeoutException as exc:
            return Retry(None, f"webhook {url}: timeout after {self.timeout}s: {exc!r}")
        except httpx.HTTPError as exc:
            return Retry(None, f"webhook {url}: network error: {exc!r}")
        code = resp.status_code
        if 200 <= code < 300:
            return OK
        reason = f"webhook {url}: HTTP {code}: {resp.text[:300]}"
        if code in RETRY_STATUSES or code >= 500:
            return Retry(parse_retry_after(resp.headers.get("Retry-After")), reason)
        return Reject(reason)

    def close(self) -> None:
        if self._http is not None and self._pid == os.getpid():
            self._http.close()
        self._http = None


class AlertSender:
    """A Pipeline (journal + Dispatcher) whose sink is a :class:`WebhookSink`.

    ``journal_path=None`` keeps alerts in memory (tests, scripts): they are retried while
    the process lives but a crash loses the ones not yet delivered. With a path, an alert
    is committed to the journal before :meth:`send` returns, so it survives SIGKILL and is
    delivered by whichever process next runs a sender on that journal."""

    def __init__(
        self,
        journal_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 10.0,
        max_attempts: int = 10,
        base_delay: float = 0.5,
        max_backoff: float = 60.0,
        batch_interval: float = 0.05,
    ):
        from ..core.pipeline import Pipeline

        if journal_path is not None:
            Path(os.fspath(journal_path)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.journal_path = journal_path
        from ..core.settings import Settings

        settings = Settings(
            durability="memory" if journal_path is None else "committed",
            journal_path=journal_path,
            max_batch_size=10,
            batch_interval=batch_interval,
            max_attempts=max_attempts,
            base_delay=base_delay,
            max_backoff=max_backoff,
            max_in_flight=1,
        )
        self.pipeline: Pipeline = Pipeline(WebhookSink(timeout=timeout), settings, name="usageledger-alerts")

    def send(self, url: str, key: str, body: dict[str, Any]) -> None:
        """Queue one alert (returns once it is committed to the journal)."""
        self.pipeline.submit(new_id(), KIND_ALERT, {"url": url, "key": key, "body": body})

    def flush(self, timeout: float | None = 30.0) -> bool:
        return self.pipeline.flush(timeout)

    def stats(self) -> dict[str, Any]:
        return self.pipeline.stats()

    def close(self, timeout: float | None = 5.0) -> bool:
        return self.pipeline.stop(timeout)
