"""Recorder: the hot path. A bounded in-memory buffer and one writer thread that
group-commits it to the journal.

Durability levels:
- ``buffered``: ``submit`` appends to a deque and returns; the writer commits every
  ``flush_interval``. SIGKILL can lose at most that window; ``stop()``, normal exit,
  SIGTERM and exceptions lose nothing.
- ``committed`` / ``fsync``: ``submit`` returns after the writer committed it (group
  commit: one transaction for every caller waiting), with fsync for ``fsync``.
- ``memory``: the journal is in memory (tests and scripts).

When the buffer holds ``max_buffer`` items the caller writes the batch to the journal
itself (caller-runs), so nothing is dropped and memory stays flat. When the journal
refuses writes: a fallback journal in another directory, then memory up to
``max_buffer``, then drops that are counted and logged at ERROR.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import operator
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..schema.records import encode
from . import paths
from ._signals import leave_signals_to_main_thread
from .journal import (
    Journal,
    JournalDestinationError,
    JournalError,
    JournalUnavailableError,
    MemoryJournal,
    SqliteJournal,
    fallback_file_name,
    open_journal,
)
from .settings import DEFAULTS, Settings

log = logging.getLogger("usageledger.recorder")

_CHUNK = 5000  # items per journal transaction: bounds a commit's latency and memory
_PRIMARY_RETRY_S = 5.0
#: items buffered before the caller writes them itself: at ~10k items the writer is behind
#: by more than a flush window, and a burst this large is rare in LLM applications
HIGH_WATER = 10_000


def fallback_paths(journal_path: str | os.PathLike[str], fallback_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where the fallback journal of ``journal_path`` may be: ``<fallback dir>/<name>``, or,
    when that one belongs to another destination, ``<name>-<hash of the primary path>``.
    The fallback dir defaults to ``<user cache dir>/usageledger/fallback`` (a per-user
    folder in /tmp when that is the journal's own folder)."""
    primary = Path(journal_path).expanduser()
    base = Path(fallback_dir).expanduser() if fallback_dir is not None else paths.fallback_dir()
    if base.resolve() == primary.parent.resolve():
        base = Path("/tmp") / f"usageledger-fallback-{os.getuid()}"
    digest = hashlib.sha1(str(primary.absolute()).encode()).hexdigest()[:10]
    return [base / primary.name, base / f"{primary.name}-{digest}"]


def open_fallbacks(
    journal_path: str | os.PathLike[str],
    destination: str | None,
    fallback_dir: str | os.PathLike[str] | None = None,
    *,
    fsync: bool = False,
    skip: set[str] | None = None,
) -> list[SqliteJournal]:
    """The fallback journals of ``journal_path`` that exist and record ``destination``
    (only look: another destination's, or one older than recorded destinations whose
    records may be anyone's, is left untouched)."""
    if destination is None:
        return []  # a sink that names no destination: nothing tells which are ours
    found: list[SqliteJournal] = []
    for path in fallback_paths(journal_path, fallback_dir):
        if (skip and str(path) in skip) or not path.is_file():
            continue
        try:
            journal = SqliteJournal(path, fsync=fsync)
        except (JournalError, OSError) as exc:
            log.warning("fallback journal %s cannot be opened to drain it: %s", path, exc)
            continue
        if journal.destination != destination:
            journal.close()
            continue
        found.append(journal)
    return found


class Recorder:
    def __init__(
        self,
        settings: Settings = DEFAULTS,
        *,
        on_commit: Callable[[int], None] | None = None,
        on_fork: Callable[[], None] | None = None,
        name: str = "usageledger",
        destination: str | None = None,
    ):
        durability, journal_path, journal_url = settings.durability, settings.journal_path, settings.journal_url
        if durability != "memory" and journal_path is None and journal_url is None:
            raise ValueError(f"durability={durability!r} needs a journal path (db_path) or journal_url")
        self.settings = settings
        self.durability = durability
        self.flush_interval = settings.flush_interval
        self.max_buffer = settings.max_buffer
        self._high_water = min(self.max_buffer, HIGH_WATER)
        self.name = name
        self._sync = durability in ("committed", "fsync")
        self._journal_path = None if journal_path is None else Path(journal_path).expanduser()
        # a journal URL (e.g. a Redis stream) is the primary; a path given with it is where
        # the local fallback journal lives
        self._journal_url = journal_url
        self._fallback_dir = settings.fallback_dir
        self._on_commit = on_commit
        # a fork made without os.register_at_fork hooks is seen here, on the hot path
        self._on_fork = on_fork or self.after_fork_child
        self._destination = destination
        self._standin_since: float | None = None  # journals[0] stands in for an unopenable file
        self._fallback_tried_at = -_PRIMARY_RETRY_S
        self.journals: list[Journal] = [self._open_primary()]
        self.journals.extend(self._existing_fallbacks())
        self._reset_state()
        self._rescue_read_only(self.journals[0])

    # -- set-up ---------------------------------------------------------------------------
    def _open_primary(self) -> Journal:
        if self._journal_path is None and self._journal_url is None:
            return MemoryJournal()
        try:
            if self._journal_url is not None:
                return open_journal(self._journal_url, fsync=self.durability == "fsync")
            return self._sqlite(self._journal_path)  # type: ignore[arg-type]
        except JournalDestinationError:
            raise  # a mistake in the set-up, not a disk failure: say so to the caller
        except (JournalError, OSError) as exc:
            log.error("journal %s cannot be opened (%s); using the fallback location",
                      self._journal_url or self._journal_path, exc)
            fallback = self._open_fallback()
            if fallback is None:
                self._standin_since = time.monotonic()
                if self._sync:
                    log.error("no fallback journal could be opened either: durability=%r records are"
                              " refused (enqueue raises) until one can; %s is tried again every %.0fs",
                              self.durability, self._journal_path, _PRIMARY_RETRY_S)
                else:
                    log.error("no fallback journal could be opened either: records are kept IN MEMORY"
                              " only (lost if this process dies) until %s can be opened; tried again"
                              " every %.0fs", self._journal_path, _PRIMARY_RETRY_S)
                return MemoryJournal()
            return fallback

    def _sqlite(self, path: Path) -> SqliteJournal:
        return SqliteJournal(path, fsync=self.durability == "fsync", destination=self._destination)

    def fallback_paths(self) -> list[Path]:
        if self._journal_url is not None:
            if self._journal_path is not None:
                return [self._journal_path]  # the local journal named beside the URL
            return fallback_paths(fallback_file_name(self._journal_url), self._fallback_dir)
        return [] if self._journal_path is None else fallback_paths(self._journal_path, self._fallback_dir)

    def _open_fallback(self) -> Journal | None:
        for path in self.fallback_paths():
            try:
                journal = self._sqlite(path)
            except JournalDestinationError as exc:
                log.info("fallback journal %s is another destination's: %s", path, exc)
                continue
            except (JournalError, OSError) as exc:
                log.error("fallback journal %s cannot be opened either: %s", path, exc)
                return None
            log.error("writing to fallback journal %s while %s refuses writes", path,
                      self._journal_url or self._journal_path)
            return journal
        return None

    def _existing_fallbacks(self) -> list[Journal]:
        """Fallback journals of this destination left by earlier processes: opened at
        start so the dispatcher drains them and stats() counts them; nothing accepted
        stays stranded there once the primary works again."""
        if self._journal_url is not None:
            return self._url_fallbacks()
        if self._journal_path is None:
            return []
        found = open_fallbacks(self._journal_path, self._destination, self._fallback_dir,
                               fsync=self.durability == "fsync", skip={j.location for j in self.journals})
        for journal in found:
            log.info("draining fallback journal %s left for %s", journal.location, self._journal_path)
        return list(found)

    def _url_fallbacks(self) -> list[Journal]:
        """Local fallback journals an earlier outage of the URL's journal left: drained."""
        found: list[Journal] = []
        for path in self.fallback_paths():
            if not path.is_file() or any(j.location == str(path) for j in self.journals):
                continue
            try:
                found.append(self._sqlite(path))
                log.info("draining fallback journal %s left for %s", path, self._journal_url)
            except (JournalError, OSError) as exc:
                log.warning("fallback journal %s cannot be opened to drain it: %s", path, exc)
        return found

    def _reset_state(self) -> None:
        """Fresh buffer, locks and thread: at start and in a forked child."""
        self._pid = os.getpid()
        self._buf: collections.deque = collections.deque()
        self._held: collections.deque = collections.deque()  # encoded, refused by every journal
        self._transit = 0  # items taken from _buf/_held by a write still under way
        self._leading = False  # a committed caller is committing for the group
        self._waiting = 0  # committed callers waiting for the leader
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._seq = 0
        self._committed = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._active = 0  # index in self.journals taking writes
        self._primary_failed_at = 0.0
        self._primary_ok = True  # the primary took the last write tried on it
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.caller_runs = 0
        self.refused = 0  # committed/fsync records whose callers got JournalUnavailableError
        self._taken = 0  # items taken from the buffer so far (numbered as _seq numbers them)
        #: (first, last, error): numbers of committed/fsync items no durable journal took
        self._refused: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=1024)
        self.last_error: str | None = None

    def after_fork_child(self) -> None:
        # the parent still holds (and will deliver) what was buffered before the fork
        for j in self.journals:
            if isinstance(j, MemoryJournal):
                j.__init__()  # type: ignore[misc]
        self._reset_state()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-writer", daemon=True)
            self._thread.start()

    # -- hot path ---------------------------------------------------------------------------
    def submit(self, id_: str, kind: str, obj: Any) -> None:
        """Accept one item; no I/O in ``buffered`` mode."""
        if self._pid != os.getpid():
            self._on_fork()
        if self._thread is None or self._stopping:
            self.start()
        if self._sync:
            self._submit_and_wait((id_, kind, obj))
            return
        buf = self._buf
        buf.append((id_, kind, obj))
        if len(buf) >= self._high_water:
            # the writer is behind: the caller writes (caller-runs), which bounds both
            # memory and what a SIGKILL can lose to about one flush window
            self.caller_runs += 1
            self.write_pending()

    def _submit_and_wait(self, item: tuple) -> None:
        # group commit: one caller at a time leads and commits every item waiting (its own
        # and its neighbours'); the others sleep on the condition until theirs is committed
        # (one wake-up each, instead of each taking the write lock in turn), and one of
        # those whose item missed the commit leads the next
        with self._cond:
            self._buf.append(item)
            self._seq += 1
            mine = self._seq
            while self._leading:
                self._waiting += 1
                self._cond.wait()
                self._waiting -= 1
                if self._committed >= mine:
                    self._raise_if_refused(mine)
                    return
            self._leading = True
            others = self._waiting
        if others:
            time.sleep(0)  # let the callers just woken add their next item to this commit
        try:
            with self._write_lock:
                if self._committed < mine:
                    self._write_locked()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        self._raise_if_refused(mine)

    def _raise_if_refused(self, seq: int) -> None:
        """``committed``/``fsync`` acknowledge only what is on disk: when no durable journal
        took the write that carried item ``seq``, its caller gets the error instead."""
        for first, last, error in self._refused:
            if first <= seq <= last:
                raise JournalUnavailableError(
                    f"record not stored: no journal on disk accepts writes ({error});"
                    f" durability={self.durability!r} acknowledges only records on disk, so"
                    " nothing was acknowledged. Free space or fix the journal's folder"
                    f" ({self._journal_path}), or use durability='buffered' to keep records in"
                    " memory meanwhile"
                )

    # -- writer -----------------------------------------------------------------------------
    def _run(self) -> None:
        leave_signals_to_main_thread()
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stopping = self._stopping
            try:
                self.write_pending()
            except Exception:  # never let the writer die: log and go on
                log.exception("writer failed; will try again")
            if stopping:
                return

    def write_pending(self, timeout: float | None = None) -> bool:
        """Write everything buffered so far to the journal (from any thread).
        False when the write lock could not be had within ``timeout``."""
        if not self._write_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return False
        try:
            self._write_locked()
        finally:
            self._write_lock.release()
        return True

    def _write_locked(self) -> None:
        while True:
            with self._cond:
                total = len(self._buf)
                n = min(total, _CHUNK)
                # every item numbered up to `upto` is in the part we take now
                upto = self._seq if n == total else None
            if n:
                self._transit = n  # before popping: `pending` must never dip below the truth
                first = self._taken + 1
                self._taken += n
                # n pops in one C loop: the writer shares the GIL with the application, so
                # its per-record work stays out of bytecode (see _encode_all)
                batch = list(map(operator.call, itertools.repeat(self._buf.popleft, n)))
                if not self._write(batch) and self._sync:
                    self._refused.append((first, first + n - 1, self.last_error or "refused"))
            elif self._held:
                self._write([])
            if upto is not None and self._sync:
                with self._cond:
                    self._committed = max(self._committed, upto)
                    self._cond.notify_all()
            if upto is not None:
                break

    def _write(self, items: list[tuple]) -> bool:
        try:
            return self._write_items(items)
        finally:
            self._transit = 0  # the rows are now in a journal, in _held, or counted as dropped

    def _write_items(self, items: list[tuple]) -> bool:
        """True when the rows are stored in a journal (False: held, dropped or refused)."""
        rows = self._encode_all(items)
        if self._held:
            self._transit += len(self._held)
            rows = [*self._held, *rows]
            self._held.clear()
        if not rows:
            return True
        if self._write_rows(rows):
            self.written += len(rows)
            if self._on_commit is not None:
                self._on_commit(len(rows))
            return True
        if self._sync:  # the callers waiting for these rows are told: nothing acknowledged
            self.refused += len(rows)
            return False
        room = self.max_buffer - len(self._held)
        self._held.extend(rows[:room])
        lost = len(rows) - max(room, 0)
        if lost > 0:
            self.dropped += lost
            log.error(
                "DROPPED %d records: every journal refuses writes and %d are held in memory (max_buffer)",
                lost, len(self._held),
            )
        return False

    def _encode_all(self, items: list[tuple]) -> list[tuple]:
        """``(id, kind, bytes)`` rows for ``items``, with no bytecode per record when the
        batch is all bytes (PersistentDelivery encodes on the caller's thread) or all
        objects that encode (each record's bytecode is time the application's threads,
        which share the GIL with this one, wait for)."""
        if not items:
            return []
        ids, kinds, objs = zip(*items, strict=True)
        types = set(map(type, objs))
        if types == {bytes}:
            return items
        if bytes not in types:
            try:
                return list(zip(ids, kinds, map(encode, objs), strict=True))
            except Exception:  # one bad record: find it, one at a time
                pass
        return [r for r in map(self._encode, items) if r is not None]

    def _encode(self, item: tuple) -> tuple[str, str, bytes] | None:
        id_, kind, obj = item
        if type(obj) is bytes:
            return item
        try:
            return (id_, kind, encode(obj))
        except Exception as exc:  # validated at submit; reaching here is a bug worth seeing
            self.dropped += 1
            log.error("record %s of kind %s cannot be encoded and is dropped: %s", id_, kind, exc)
            return None

    def _reopen_primary(self) -> None:
        """The journal file could not be opened at start and a memory journal stands in:
        try the real location again (every few seconds), and write there once it opens.
        The stand-in stays in the chain, so what it holds is still delivered."""
        if self._standin_since is None or time.monotonic() - self._standin_since < _PRIMARY_RETRY_S:
            return
        self._standin_since = time.monotonic()
        try:
            journal = self._sqlite(self._journal_path)  # type: ignore[arg-type]
        except (JournalError, OSError) as exc:
            log.debug("journal %s still cannot be opened: %s", self._journal_path, exc)
            return
        log.warning("journal %s opened: records are written to disk again", self._journal_path)
        self.journals.insert(0, journal)
        self._active = 0
        self._standin_since = None

    def _write_rows(self, rows: list[tuple[str, str, bytes]]) -> bool:
        """Try the active journal, then the next ones in the chain; True once stored."""
        self._reopen_primary()
        if self._active and time.monotonic() - self._primary_failed_at > _PRIMARY_RETRY_S:
            self._active = 0  # give the primary another chance
        i = self._active
        while True:
            if i >= len(self.journals):
                fallback = None
                if len(self.journals) == 1 and time.monotonic() - self._fallback_tried_at > _PRIMARY_RETRY_S:
                    self._fallback_tried_at = time.monotonic()  # not on every write: once per retry period
                    fallback = self._open_fallback()
                if fallback is None:
                    return False
                self.journals.append(fallback)
            if self._sync and isinstance(self.journals[i], MemoryJournal):
                i += 1  # not on disk: committed/fsync never acknowledge a write there
                continue
            try:
                self.journals[i].append(rows)
            except Exception as exc:  # any refusal moves on down the chain: never lose rows
                self.write_errors += 1
                self.last_error = str(exc)
                log.error("journal %s refused %d records: %s", self.journals[i].location, len(rows), exc)
                if i == 0:
                    self._primary_failed_at = time.monotonic()
                    self._primary_ok = False
                i += 1
                continue
            if i == 0:
                self._primary_ok = True
            if i != self._active:
                self._active = i
            if i > 0:
                self._rescue_read_only(self.journals[0])
            return True

    def _rescue_read_only(self, journal: Journal) -> None:
        """A journal that refuses writes cannot claim, so its items would never leave:
        copy them into the fallback journal and deliver them from there (the copy in the
        read-only file is not counted as pending; any record delivered twice is dropped by
        the collector, by id)."""
        if not getattr(journal, "read_only", False):
            return
        self._primary_ok = False
        if len(self.journals) == 1:
            fallback = self._open_fallback()
            if fallback is None:
                return
            self.journals.append(fallback)
            self._active = 1
        try:
            items, upto = journal.copy_out()  # type: ignore[attr-defined]
            for start in range(0, len(items), _CHUNK):
                self.journals[1].append(items[start:start + _CHUNK])
        except Exception as exc:  # stays read-only and uncopied: tried again on the next refusal
            log.error("copying the items of read-only journal %s into %s failed: %s",
                      journal.location, self.journals[1].location, exc)
            return
        journal.mark_copied(upto)  # type: ignore[attr-defined]
        if items:
            log.error("copied %d records from read-only journal %s into %s, to be delivered from there",
                      len(items), journal.location, self.journals[1].location)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._buf) + len(self._held) + self._transit

    def stop(self, timeout: float | None = None) -> bool:
        """Write what is buffered, then end the writer thread."""
        if self._pid != os.getpid():
            self.after_fork_child()
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        done = self.write_pending(timeout)
        with self._cond:
            self._cond.notify_all()
        return done and not self._buf

    def _tier(self) -> str:
        if self.durability == "memory":
            return "memory"
        active = self.journals[self._active] if self._active < len(self.journals) else None
        if self._held or active is None or isinstance(active, MemoryJournal):
            return "memory"
        return "journal" if self._active == 0 else "fallback"

    def stats(self) -> dict[str, Any]:
        return {
            "buffered": len(self._buf),
            "held_in_memory": len(self._held),
            "written": self.written,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
            "caller_runs": self.caller_runs,
            "journal": self.journals[self._active].location if self.journals else None,
            # true while writes go to a fallback, and while the primary refuses them (between
            # two tries of the primary, the next write would go to the fallback again)
            "fallback_active": self._active != 0 or not self._primary_ok,
            # where accepted records are now: "journal" (the primary file), "fallback", or
            # "memory" (no journal on disk takes them: lost if the process dies)
            "tier": self._tier(),
            "refused": self.refused,
            "last_write_error": self.last_error,
        }
