"""Pipeline: Recorder (hot path -> journal) + Dispatcher (journal -> sink), with the
process-level duties: flush at interpreter exit and on SIGTERM, restart after fork.

Every client surface (PersistentDelivery, Meter, TelemetryClient, UsageTracker) is a
thin layer over one Pipeline.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import _hooks, paths
from ._sqlite import fork_gate
from .dispatcher import Dispatcher
from .journal import Journal, JournalError, SqliteJournal
from .recorder import Recorder
from .settings import DEFAULTS, Settings
from .sink import Sink

log = logging.getLogger("usageledger")

__all__ = ["Pipeline"]

#: how long interpreter exit and SIGTERM wait for delivery after writing the buffer
EXIT_DELIVERY_TIMEOUT = DEFAULTS.exit_timeout

_live: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_installed = False


class Pipeline:
    """``Pipeline(sink, settings=None, *, dispatch=True, name=..., drain_also=(), **options)``.

    ``settings``: a :class:`~usageledger.settings.Settings` (default: its defaults);
    ``options`` are keys of Settings that change it: ``journal_path``, ``journal_url``,
    ``fallback_dir``, ``durability``, ``flush_interval`` (the group-commit interval),
    ``max_buffer``, ``max_batch_size``, ``max_batch_bytes``, ``batch_interval``,
    ``max_attempts``, ``max_retry_age``, ``base_delay``, ``max_backoff``, ``lease_s``,
    ``max_in_flight``, ``exit_timeout``; ``poll_interval`` is accepted and changes nothing.
    A bad value raises :class:`~usageledger.config.ConfigError` naming it.
    ``dispatch=False``: record only (another process delivers); ``drain_also``: journal
    files this pipeline only drains (e.g. one under a name an older version used).
    """

    def __init__(
        self,
        sink: Sink,
        settings: Settings | None = None,
        *,
        dispatch: bool = True,
        name: str = "usageledger",
        drain_also: Iterable[str | os.PathLike[str]] = (),
        **options: Any,
    ):
        settings = (settings or DEFAULTS).replace(**options) if options else (settings or DEFAULTS)
        self.settings = settings
        self.exit_timeout = settings.exit_timeout
        self.dispatcher = Dispatcher(lambda: self.journals, sink, settings, name=name)
        self.recorder = Recorder(
            settings,
            on_commit=self.dispatcher.notify,
            on_fork=self._after_fork_child,
            name=name,
            destination=sink.destination,
        )
        journal_path = settings.journal_path
        #: journals only drained, never written: e.g. one under a name an older version used
        self._drained = self._open_drained(drain_also, sink.destination) if journal_path else []
        #: the hot path: the recorder's own method, no extra call layer
        self.submit = self.recorder.submit
        self.journal = self.recorder.journals[0]
        self._dispatch = dispatch
        self._stopped = False
        self._started_at = time.monotonic()
        _install_process_hooks()
        _live.add(self)
        self.recorder.start()
        if dispatch:
            self.dispatcher.start()
        self._pid = os.getpid()

    @staticmethod
    def _open_drained(files: Any, destination: str | None) -> list[Journal]:
        out: list[Journal] = []
        for path in files:
            if not Path(path).is_file():
                continue
            try:
                out.append(SqliteJournal(path, destination=destination))
            except JournalError as exc:
                log.warning("journal %s is not drained by this pipeline: %s", path, exc)
        return out

    @property
    def journals(self) -> list[Journal]:
        """Every journal this pipeline delivers from: the writer's chain (primary, then
        fallbacks), then journals it only drains."""
        return self.recorder.journals + self._drained

    def start_dispatch(self) -> None:
        """Start delivering from a pipeline made with ``dispatch=False``."""
        self._dispatch = True
        self.dispatcher.start()

    @property
    def durability(self) -> str:
        return self.recorder.durability

    # -- waits with deadlines -----------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Write the buffer to the journal and deliver everything ready. True when nothing
        is left ready or in flight (dead items count as settled) before ``timeout``."""
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.recorder.write_pending(_remaining(deadline)):
            return False
        if not self._dispatch:
            return not self.recorder.pending
        if self._stopped:
            return self._settled()
        self.dispatcher.start()
        self.dispatcher.kick()
        kicked = time.monotonic()
        while True:
            if self._settled():
                return True
            left = _remaining(deadline)
            if left is not None and left <= 0:
                return False
            time.sleep(0.01 if left is None else min(0.01, left))
            if self.dispatcher.idle and time.monotonic() - kicked > 0.05:
                self.dispatcher.kick()
                kicked = time.monotonic()

    def _settled(self) -> bool:
        if self.recorder.pending:
            return False
        return not any(journal.has_pending() for journal in self.journals)

    def stop(self, timeout: float | None = None) -> bool:
        """Write the buffer to the journal, deliver until ``timeout``, end the threads.
        What is not delivered stays in the journal. True when everything was settled."""
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        self.recorder.stop(_remaining(deadline))
        if self._dispatch and not self.dispatcher.stop(_remaining(deadline)):
            self.dispatcher.abandon()  # sends hung in flight: their claims back to ready
        self._stopped = True
        _live.discard(self)
        try:
            settled = self._settled()
        except Exception:
            return False
        if not settled:
            self.warn_undelivered()
        return settled

    close = stop

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(self.exit_timeout)

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._after_fork_child()

    def _after_fork_child(self) -> None:
        self._pid = os.getpid()
        self.recorder.after_fork_child()
        self.dispatcher.after_fork_child()
        self._stopped = False
        self.recorder.start()
        if self._dispatch:
            self.dispatcher.start()

    # -- introspection -------------------------------------------------------------------------
    def undelivered(self) -> tuple[int, list[str]]:
        """Records accepted but not delivered yet (ready or in flight in every journal this
        pipeline delivers from, plus any held in memory), and the journals holding them."""
        n = self.recorder.pending
        where: list[str] = []
        for journal in self.journals:
            try:
                s = journal.stats()
            except Exception:
                continue
            k = (s.get("ready") or 0) + (s.get("inflight") or 0)
            if k:
                n += k
                where.append(journal.location)
        return n, where

    def warn_undelivered(self) -> None:
        """One WARNING when records wait undelivered (at stop, and so at exit): how many,
        where, and the command that shows them. A script whose collector is down must not
        exit silently."""
        try:
            n, where = self.undelivered()
        except Exception:
            return
        if not n:
            return
        if not where or self.durability == "memory":
            log.warning(
                "%d records are not delivered and are lost when this process exits: they are held"
                " only in memory (durability=%r)", n, self.durability,
            )
            return
        log.warning(
            "%d records are not delivered yet: they wait in %s and go out with the next process"
            " that uses this journal (or run one to deliver them). See them with `usageledger stats %s`",
            n, " and ".join(where), where[0],
        )

    def stats(self) -> dict[str, Any]:
        self._check_fork()
        journal = self.recorder.journals[0]
        out: dict[str, Any] = {}
        try:
            js = journal.stats()
        except Exception as exc:
            js = {"ready": None, "inflight": None, "dead": None, "error": str(exc)}
        for extra in self.journals[1:]:
            try:
                es = extra.stats()
            except Exception:
                continue
            for k in ("ready", "inflight", "dead", "delivered", "retried"):
                if isinstance(js.get(k), int):
                    js[k] += es.get(k, 0)
        rs = self.recorder.stats()
        ds = self.dispatcher.stats()
        oldest = js.get("oldest_ready_created")
        elapsed = max(time.monotonic() - self._started_at, 1e-9)
        out.update(
            queued=(js.get("ready") or 0) + rs["buffered"] + rs["held_in_memory"],
            inflight=js.get("inflight"),
            dead=js.get("dead"),
            delivered=js.get("delivered"),
            retried=js.get("retried"),
            dropped=rs["dropped"],
            last_error=ds["last_error"] or rs["last_write_error"],
            oldest_queued_age_s=None if oldest is None else round(max(time.time() - oldest, 0.0), 3),
            enqueue_rate=round(rs["written"] / elapsed, 1),
            delivery_rate=ds["delivery_rate"] or round(ds["delivered_here"] / elapsed, 1),
            durability=self.durability,
            tier=rs["tier"],
            journal=journal.location,
            lease_holder=js.get("lease_holder"),
            is_dispatcher=js.get("lease_holder") == self.dispatcher.holder,
            recorder=rs,
            dispatcher=ds,
        )
        return out


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


# -- process hooks ---------------------------------------------------------------------------
#: set while the exit flush runs: a SIGTERM that arrives then (``Pool.terminate`` sends
#: one to workers already running their exit finalizer) must not flush again inside the
#: interrupted flush, whose locks the same thread holds (measured: a worker hung for ever)
_exiting = threading.Event()


def _at_exit() -> None:
    _exiting.set()
    try:
        for p in list(_live):
            try:
                p.stop(p.exit_timeout)
            except Exception:
                log.exception("flushing at exit failed")
    finally:
        _exiting.clear()


#: how long the fork hook waits for our threads to leave SQLite (a commit waiting on another
#: process's write lock can take up to the journal's busy timeout, 10 s)
FORK_WAIT_S = 12.0
_held_at_fork: list[Any] = []


def _before_fork() -> None:
    # pause our own threads at a safe point: the writer between commits, the dispatcher
    # between settlements, and no thread inside SQLite (the fork gate); the hot path is
    # untouched (buffered enqueue takes none of these locks)
    deadline = time.monotonic() + FORK_WAIT_S
    for p in list(_live):
        for lock in (p.recorder._write_lock, p.dispatcher._settle_lock):
            if lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                _held_at_fork.append(lock)
            else:
                log.warning("fork(): a usageledger thread did not pause within %.0fs", FORK_WAIT_S)
    if not fork_gate.close(max(deadline - time.monotonic(), 0.0)):
        log.warning("fork(): a usageledger thread is still inside SQLite; the child may hang on it")


def _after_fork_in_parent() -> None:
    fork_gate.open()
    while _held_at_fork:
        _held_at_fork.pop().release()


def _after_fork_in_child() -> None:
    fork_gate.reset()
    _held_at_fork.clear()  # the child's pipelines make new locks when they restart


def _restart_in_child() -> None:
    # after every other module renewed its locks and handles (see _hooks.restart_in_child)
    for p in list(_live):
        try:
            p._after_fork_child()
        except Exception:
            log.exception("restarting after fork failed")


def _on_sigterm(signum: int, frame: Any) -> None:
    if _exiting.is_set():
        return  # the exit flush this signal interrupted finishes, then the process ends
    for p in list(_live):
        try:
            p.recorder.write_pending(p.exit_timeout)
        except Exception:
            log.exception("writing the buffer on SIGTERM failed")
    prev = _previous_sigterm
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_DFL or prev is None:
        _at_exit()  # deliver what can be delivered quickly, as a normal exit would
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


_previous_sigterm: Any = None


def _install_process_hooks() -> None:
    global _hooks_installed, _previous_sigterm
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        # the fork gate is closed by this module's before-fork callback, not one of its own:
        # it must close after the pipelines' threads paused, within the same deadline
        _hooks.at_exit(_at_exit)
        _hooks.on_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                       after_in_child=_after_fork_in_child, restart_in_child=_restart_in_child)
        if threading.current_thread() is threading.main_thread():
            try:
                _previous_sigterm = signal.getsignal(signal.SIGTERM)
                signal.signal(signal.SIGTERM, _on_sigterm)
            except (ValueError, OSError):  # not allowed here (embedded interpreter)
                log.debug("SIGTERM handler not installed")


def default_journal_path(name: str = "queue.db") -> Path:
    """``<user data dir>/<name>`` (see :mod:`usageledger.paths`)."""
    return paths.data_file(name)
