"""Dispatcher: journal -> sink. Owns batching, backoff, attempts, dead-lettering, lease.

The sink only speaks its wire and reports a result per record; every policy lives here:
- batches of up to ``max_batch_size`` items and ``max_batch_bytes`` bytes, sent when a
  full batch waits or every ``batch_interval``;
- transient failures of some records: exponential backoff with full jitter capped at
  ``max_backoff``; a record retries until it is older than ``max_retry_age`` (and, only
  when a user sets it, until ``max_attempts``), then it is dead-lettered;
- a failure of the destination as a whole (the sink gives every record of a batch one
  Retry: network error, 5xx, 408/425/429, a storage that is down) is an outage: the
  dispatcher pauses as a whole and sends one probe batch at a time, at an interval that
  grows from ``base_delay`` by half each time up to ``max_backoff`` (or exactly the
  server's ``Retry-After``); the first probe that succeeds ends the outage and the backlog
  flows at full speed at once (the records of failed probes wait no longer than the
  probe interval);
- a batch refused whole without per-record results is split in halves until the bad
  records are isolated, so one poison record never sinks the rest;
- claims are released (ack/retry/dead) as soon as a send returns: the dispatcher never
  sleeps while it holds claims it could release.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ._signals import leave_signals_to_main_thread
from .journal import Journal, JournalError, JournalItem
from .settings import DEFAULTS, Settings
from .sink import Ok, Reject, Result, Retry, Sink, all_results

log = logging.getLogger("usageledger.dispatcher")

#: records whose transient failures go on longer than this are dead-lettered (3 days)
DEFAULT_MAX_RETRY_AGE = DEFAULTS.max_retry_age
#: growth of the probe interval per failed probe during an outage: slow enough that the
#: wait after the destination returns stays a fraction of the outage (at most a third of
#: it, until ``max_backoff``), fast enough that a long outage costs few requests
_PROBE_GROWTH = 1.5

#: how often a final drain looks again while another process holds the lease
_FINAL_POLL_S = 0.05


class Dispatcher:
    def __init__(
        self,
        journals: Callable[[], list[Journal]],
        sink: Sink,
        settings: Settings = DEFAULTS,
        *,
        name: str = "usageledger",
    ):
        # every value was checked when ``settings`` was built
        self.settings = settings
        self._journals = journals
        self.sink = sink
        self.max_batch_size = settings.max_batch_size
        self.max_batch_bytes = settings.max_batch_bytes
        self.batch_interval = settings.batch_interval
        self.max_attempts = settings.max_attempts
        self.max_retry_age = settings.max_retry_age
        self.base_delay = settings.base_delay
        self.max_backoff = settings.max_backoff
        self.lease_s = settings.lease_s
        # requests in flight at once, for sinks that take concurrent sends: the destination
        # works on one batch while the next is claimed, encoded and sent
        self.max_in_flight = settings.max_in_flight if sink.concurrent_sends else 1
        self.name = name
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self.holder = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leases: dict[int, float] = {}  # id(journal) -> when we last renewed
        self._pause_until = 0.0
        self._probe_interval = 0.0  # > 0 while the destination is out: the next probe's wait
        self._final_deadline: float | None = None
        self._waiting = 0  # items committed since the last drain, to wake on a full batch
        self._busy = False
        self._pool: _SenderThreads | None = None  # never inherited across fork
        self._settle_lock = threading.Lock()
        self.sent = 0
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self.requests = 0
        self.last_error: str | None = None
        self._rate_mark = (time.monotonic(), 0)
        self.delivery_rate = 0.0

    def after_fork_child(self) -> None:
        # a new holder name: the child never acks what the parent claimed
        self._reset_state()

    # -- control -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-dispatcher", daemon=True)
            self._thread.start()

    def notify(self, n: int) -> None:
        """Called by the writer after a commit of ``n`` items."""
        self._waiting += n
        if self._waiting >= self.max_batch_size:
            self._wake.set()

    def kick(self) -> None:
        """Send what is ready now instead of at the next interval (a pause after a
        failing destination, e.g. its Retry-After, still holds)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Deliver what is ready until ``timeout`` (None: until done), then end the
        thread, release the lease and close the sink. True when the thread ended."""
        self._final_deadline = None if timeout is None else time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    def _release_all(self) -> None:
        for journal in self._journals():
            if id(journal) in self._leases:
                try:
                    journal.release(self.holder)
                except JournalError as exc:
                    log.warning("releasing the lease of %s failed: %s", journal.location, exc)
        self._leases.clear()

    # -- loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        leave_signals_to_main_thread()
        try:
            while True:
                wait = self.batch_interval
                pause = self._pause_until - time.time()
                if pause > 0:
                    wait = min(pause, self.batch_interval)
                if not self._stop.is_set():
                    self._wake.wait(wait)
                    self._wake.clear()
                if self._stop.is_set():
                    self._final_drain()
                    return
                if time.time() >= self._pause_until:
                    self._drain_logged()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            self._release_all()
            try:
                self.sink.close()
            except Exception:
                log.exception("closing sink %s failed", self.sink.name)

    def _final_drain(self) -> None:
        deadline = self._final_deadline
        if deadline is None:
            # no deadline: one pass over what is ready now (a failing destination or a
            # lease held elsewhere must not make stop(None) wait forever)
            if time.time() >= self._pause_until:
                self._drain_logged(float("inf"))
            return
        # deliver until the deadline: wait out a pause (Retry-After, an outage probe) and a
        # lease held by another process (it may be hung, or have just died), and look again
        while time.monotonic() < deadline:
            pause = self._pause_until - time.time()
            if pause > 0:
                time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                continue
            self._drain_logged(deadline)
            if not self._pending():
                return
            time.sleep(min(_FINAL_POLL_S, max(deadline - time.monotonic(), 0.0)))

    def _pending(self) -> bool:
        try:
            return any(journal.has_pending() for journal in self._journals())
        except JournalError:
            return False

    def abandon(self) -> None:
        """After a stop whose deadline passed with sends hung in flight: give the lease
        up now, from the caller's thread, so the claims of the hung sends return to ready
        for the next dispatcher (this process's late answers then settle nothing)."""
        self._release_all()

    def _drain_logged(self, deadline: float | None = None) -> None:
        try:
            self.drain(deadline)
        except Exception as exc:  # the dispatcher must outlive any failure
            self.last_error = repr(exc)
            log.exception("dispatcher failed; will try again")

    def drain(self, deadline: float | None = None) -> int:
        """Send batches until nothing is ready (or the deadline / a pause); returns how
        many items were settled."""
        settled = 0
        self._waiting = 0
        self._busy = True
        in_flight: collections.deque[Future] = collections.deque()
        try:
            for journal in list(self._journals()):
                try:
                    while not self._stop.is_set() or deadline is not None:
                        if deadline is not None and time.monotonic() >= deadline:
                            return settled
                        if time.time() < self._pause_until or not self._hold_lease(journal):
                            break
                        batch = journal.claim(self.max_batch_size, self.holder)
                        if not batch:
                            break
                        if self._probe_interval:  # the destination is out: one probe, alone
                            while in_flight:
                                in_flight.popleft().result()
                            self._send(journal, batch)
                            settled += len(batch)
                            continue
                        future = self._submit(journal, batch)
                        if future is None:
                            self._send(journal, batch)
                        else:
                            in_flight.append(future)
                            if len(in_flight) >= self.max_in_flight:
                                in_flight.popleft().result()
                        settled += len(batch)
                except JournalError as exc:
                    # one journal that refuses (a full disk that fails even the replay of
                    # settlements) must not keep the others, e.g. its fallback, from draining
                    self.last_error = repr(exc)
                    log.warning("journal %s cannot be drained now (%s); draining the others",
                                journal.location, exc)
                while in_flight:  # settle this journal's sends before the next journal
                    in_flight.popleft().result()
        finally:
            self._busy = False
            for f in in_flight:  # after a failure above: let the others finish and settle
                try:
                    f.result()
                except Exception:
                    log.exception("a concurrent send failed")
        return settled

    def _submit(self, journal: Journal, batch: list[JournalItem]) -> Future | None:
        """Send ``batch`` on a sender thread; None means "send it here": one request at a
        time, or a final drain (stop, interpreter exit), which ends the sender threads."""
        if self.max_in_flight == 1 or self._stop.is_set():
            return None
        if self._pool is None:
            self._pool = _SenderThreads(self.max_in_flight, f"{self.name}-send")
        return self._pool.submit(self._send, journal, batch)

    def _hold_lease(self, journal: Journal) -> bool:
        now = time.monotonic()
        last = self._leases.get(id(journal))
        if last is not None and now - last < self.lease_s / 3:
            return True
        try:
            held = journal.acquire(self.holder, self.lease_s)
        except JournalError as exc:
            self.last_error = str(exc)
            log.warning("lease on %s not renewed: %s", journal.location, exc)
            held = False
        if held:
            self._leases[id(journal)] = now
        else:
            self._leases.pop(id(journal), None)
        return held

    # -- one batch -----------------------------------------------------------------------------
    def _send(self, journal: Journal, batch: list[JournalItem]) -> None:
        for part in self._split_by_bytes(batch):
            self._send_part(journal, part)

    def _split_by_bytes(self, batch: list[JournalItem]) -> list[list[JournalItem]]:
        parts: list[list[JournalItem]] = [[]]
        size = 0
        for item in batch:
            if parts[-1] and size + len(item.data) > self.max_batch_bytes:
                parts.append([])
                size = 0
            parts[-1].append(item)
            size += len(item.data)
        return parts

    def _send_part(self, journal: Journal, part: list[JournalItem]) -> None:
        self.requests += 1
        try:
            results = self.sink.send(part)
        except Exception as exc:
            log.warning("sink %s raised while sending %d items: %r", self.sink.name, len(part), exc)
            results = all_results(part, Retry(None, f"{type(exc).__name__}: {exc}"))
        first = results.get(part[0].id)
        if len(part) > 1 and isinstance(first, Reject) and first.whole_batch:
            # refused whole with no per-record verdict: halve until the poison is alone
            mid = len(part) // 2
            self._send_part(journal, part[:mid])
            self._send_part(journal, part[mid:])
            return
        self._settle(journal, part, results)

    def _settle(self, journal: Journal, part: list[JournalItem], results: dict[str, Result]) -> None:
        with self._settle_lock:  # counters and the pause are shared by concurrent sends
            self._settle_locked(journal, part, results)

    def _settle_locked(self, journal: Journal, part: list[JournalItem], results: dict[str, Result]) -> None:
        ok: list[str] = []
        dead: dict[str, list[str]] = {}
        retry: dict[tuple[str, float], list[str]] = {}
        now = time.time()
        verdicts = {id(r) for r in results.values()}
        first = results.get(part[0].id)
        # one Retry object for every record (``all_results``): the destination failed as a
        # whole, not these records
        outage = isinstance(first, Retry) and len(verdicts) == 1 and len(results) >= len(part)
        if outage:
            not_before = self._enter_outage(first, now)  # type: ignore[arg-type]
        for item in part:
            result = results.get(item.id) or Retry(None, "no result for this id")
            if isinstance(result, Ok):
                ok.append(item.id)
            elif isinstance(result, Reject):
                dead.setdefault(result.reason, []).append(item.id)
            else:
                given_up = self._give_up(item, now)
                if given_up:
                    dead.setdefault(f"{given_up}: {result.reason}", []).append(item.id)
                    continue
                when = not_before if outage else round(now + self._delay(item.attempts, result.after), 3)
                retry.setdefault((result.reason, when), []).append(item.id)
        if ok:
            journal.ack(ok)
            self.delivered += len(ok)
            if self._probe_interval:
                log.warning("%s answers again: delivering the backlog", self.sink.name)
            self._probe_interval = 0.0  # the destination answers: full speed at once
            self._pause_until = 0.0
        for (reason, not_before_), ids in retry.items():
            journal.retry(ids, reason, not_before_)
            self.retried += len(ids)
            self.last_error = reason
        for reason, ids in dead.items():
            journal.dead(ids, reason)
            self.dead += len(ids)
            self.last_error = reason
            log.error("dead-lettered %d records: %s", len(ids), reason)
        self.sent += len(part)
        self._update_rate()

    def _enter_outage(self, result: Retry, now: float) -> float:
        """The destination failed as a whole: pause every send until the next probe and
        return when the failed records may go again (the same moment)."""
        if result.after is not None:
            wait = max(result.after, 0.0)  # the server said when: exactly that
        else:
            if not self._probe_interval:
                log.warning("%s is failing as a whole (%s): probing it with one batch at a time",
                            self.sink.name, result.reason)
                self._probe_interval = self.base_delay
            else:
                self._probe_interval = min(self._probe_interval * _PROBE_GROWTH, self.max_backoff)
            wait = self._probe_interval
        self._probe_interval = self._probe_interval or self.base_delay
        self._pause_until = max(self._pause_until, now + wait)
        return round(now + wait, 3)

    def _give_up(self, item: JournalItem, now: float) -> str | None:
        """Why a record that failed again is dead-lettered, or None to retry it."""
        created = _created(item)
        if created is not None and now - created > self.max_retry_age:
            return (f"gave up after {item.attempts} attempts over {now - created:.0f}s"
                    f" (older than max_retry_age={self.max_retry_age:g}s)")
        if self.max_attempts is not None and item.attempts >= self.max_attempts:
            return f"gave up after {item.attempts} attempts"
        return None

    def _delay(self, attempts: int, after: float | None) -> float:
        if after is not None:
            return max(after, 0.0)
        cap = min(self.max_backoff, self.base_delay * (2 ** max(attempts - 1, 0)))
        return random.uniform(0, cap)  # full jitter

    def _update_rate(self) -> None:
        t0, n0 = self._rate_mark
        now = time.monotonic()
        if now - t0 >= 1.0:
            self.delivery_rate = (self.delivered - n0) / (now - t0)
            self._rate_mark = (now, self.delivered)

    @property
    def idle(self) -> bool:
        return not self._busy

    def stats(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "sent": self.sent,
            "delivered_here": self.delivered,
            "retried_here": self.retried,
            "dead_here": self.dead,
            "requests": self.requests,
            "delivery_rate": round(self.delivery_rate, 1),
            "paused_for_s": round(max(self._pause_until - time.time(), 0.0), 3),
            "outage": bool(self._probe_interval),
            "probe_interval_s": round(self._probe_interval, 3),
            "last_error": self.last_error,
        }


def _created(item: JournalItem) -> float | None:
    """When a record was made (epoch seconds): the journal's ``created`` when it gives
    one, else the time in a UUIDv7 id (every id the library makes); None for other ids."""
    created = getattr(item, "created", None)
    if created:
        return created
    id_ = item.id
    if len(id_) == 36 and id_[14] == "7" and id_[8] == "-":
        try:
            return int(id_[:8] + id_[9:13], 16) / 1000.0
        except ValueError:
            return None
    return None


class _SenderThreads:
    """Daemon threads running sends. Not a ThreadPoolExecutor: its workers hold up
    interpreter exit until their request ends (a hung destination would delay exit past
    every deadline), and it refuses new work once exit has begun."""

    def __init__(self, n: int, name: str):
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for i in range(n):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()
        self._n = n

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        leave_signals_to_main_thread()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        for _ in range(self._n):
            self._jobs.put(None)
