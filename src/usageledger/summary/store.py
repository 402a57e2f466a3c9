"""The snapshot store of the daily-summary file: where the copies live, atomic writes with
the previous version kept, recovery from corrupt or unreadable copies, and a lock shared
by every process writing the file. The document itself (structure, merge of a batch,
totals) is :mod:`usageledger.summary_file`; the pipeline reaches the store through
:class:`~usageledger.sinks.summary.SummarySink`, readers through :meth:`SummaryStore.snapshot`.

Every write is a whole new snapshot: temp file in the same directory, fsync, the previous
version hard-linked to ``<name>.bak``, rename, fsync of the directory.

Exactly once: a batch is applied to a copy of the snapshot; the copy replaces the one in
memory only after the file write succeeded, and only then is the write reported done (the
dispatcher then acks the records). The snapshot keeps the ids of the last
``dedup_window`` records it counted, so a batch redelivered after a write that succeeded
but whose ack did not (crash, journal error) is recognised and not counted twice.

Failure tiers: the primary path, then a backup location, then an emergency location (each
with its own ``.bak``). A write goes to the first one that accepts it; when none does,
:meth:`SummaryStore.apply` returns the reason and the records stay in the journal.
Because every write is a full snapshot, reading never adds locations up: of the copies of
one lineage the highest generation wins. Snapshots of *different* lineages (a file that
was unreadable when a fresh lineage had to start, a file copied in by hand) hold disjoint
records: they are added up, and the next write absorbs them. A file that exists but
cannot be read is never overwritten.

Corruption: a copy that is not a valid snapshot is renamed to ``<name>.corrupt-<UTC time>``
(archived, never deleted), logged and counted; the newest valid copy is used, or a fresh
snapshot when there is none. The snapshot in memory counts as a copy too, so a file
corrupted under a running process is repaired by the next write with nothing lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core._files import write_all
from ..schema.records import UsageRecord
from ..schema.totals import Totals
from .document import (
    CorruptSummary,
    Days,
    NewerSummary,
    SummaryDoc,
    absorb,
    decode_doc,
    encode_doc,
    entries,
    live_copies,
    merge_days,
    new_doc,
    totals,
    with_records,
)

__all__ = ["SummaryStore", "Snapshot", "Location", "TIERS", "default_locations"]

log = logging.getLogger("usageledger.summary")

TIERS = ("primary", "backup", "emergency")


@dataclass(frozen=True)
class Snapshot:
    """What the summary file holds at one moment, as :meth:`SummaryStore.snapshot` read it.

    ``parts``: the days of every live lineage, this store's first; the totals are their
    sum (lineages hold disjoint records). ``pending``: the records of the caller's
    ``pending`` map that the file does not count (empty without one)."""

    lineage: str | None
    generation: int
    parts: tuple[Days, ...]
    pending: tuple[UsageRecord, ...] = ()

    def days(self) -> Days:
        """The days of every lineage added up into one (day -> provider -> model -> Entry)."""
        return self.parts[0] if len(self.parts) == 1 else merge_days(self.parts)

    def entries(self, first: str | None = None,
                last: str | None = None) -> Iterator[tuple[str, str, str, Totals]]:
        """``(day, provider, model, Totals)`` of the file within ``first``..``last``
        (``YYYY-MM-DD``, inclusive), once per lineage holding the key."""
        return entries(self.parts, first, last)

    def totals(self, first: str | None = None, last: str | None = None) -> Totals:
        """The file's totals within ``first``..``last`` (``YYYY-MM-DD``, inclusive)."""
        return totals(self.parts, first, last)


@dataclass(frozen=True)
class Location:
    tier: str
    path: Path

    @property
    def bak(self) -> Path:
        return self.path.with_name(self.path.name + ".bak")

    @property
    def files(self) -> tuple[Path, Path]:
        return (self.path, self.bak)


def default_locations(
    path: Path, backup_dir: str | os.PathLike[str] | None, emergency_dir: str | os.PathLike[str] | None
) -> list[Location]:
    """Primary, backup and emergency locations. The backup and emergency file names carry
    a hash of the primary path, so trackers of different files never share a copy."""
    from ..core import paths

    tag = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"{path.stem}-{tag}{path.suffix or '.json'}"
    bdir = Path(backup_dir) if backup_dir is not None else paths.summary_backup_dir()
    edir = Path(emergency_dir) if emergency_dir is not None else paths.emergency_dir()
    out = [Location("primary", path)]
    seen = {path}
    for tier, d in (("backup", bdir), ("emergency", edir)):
        p = d.expanduser().absolute() / name
        if p not in seen:
            out.append(Location(tier, p))
            seen.add(p)
    return out


def _errname(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return errno.errorcode[code]
    return type(exc).__name__


def _sig(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class SummaryStore:
    """The daily-summary file on disk, shared by threads and processes.

    ``apply(records)`` counts records into the file (atomically, once);
    ``snapshot()`` reads it; ``stats()`` tells what happened. ``price(record) -> record``
    fills in a missing cost before a record is counted; ``on_applied(ids)`` is called
    under the store lock once records are durably counted (or known to be counted
    already), the lock :meth:`snapshot` is taken under, so a caller that drops those ids
    from its ``pending`` map in ``on_applied`` sees each record in the snapshot or
    pending, never both and never neither."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        backup_dir: str | os.PathLike[str] | None = None,
        emergency_dir: str | os.PathLike[str] | None = None,
        price: Callable[[UsageRecord], UsageRecord] | None = None,
        on_applied: Callable[[Iterable[str]], None] | None = None,
        dedup_window: int = 10_000,
    ):
        if isinstance(dedup_window, bool) or not isinstance(dedup_window, int) or dedup_window < 0:
            raise ValueError(f"dedup_window must be an integer >= 0, got {dedup_window!r}")
        self.path = Path(path).expanduser().absolute()
        self.locations = default_locations(self.path, backup_dir, emergency_dir)
        self._price = price
        self._on_applied = on_applied
        self.dedup_window = dedup_window
        self.writer = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._doc: SummaryDoc | None = None  # the snapshot writes continue from
        #: False while _doc is a fresh snapshot never written: it is then no copy of anything
        self._doc_on_disk = False
        self._recent: set[str] = set()  # ids counted in _doc or in a foreign snapshot
        self._foreign: list[SummaryDoc] = []  # other live lineages, added in reads
        self._unreadable: set[Path] = set()
        self._blocked: set[Path] = set()  # files we must not overwrite
        self._writes_since_load = 0
        self._sigs: tuple | None = None
        self._stamp_seen = b""
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._tier_now: str | None = None
        self._c: dict[str, Any] = {
            "writes": 0, "write_failures": 0, "records_applied": 0, "duplicates_skipped": 0,
            "retried_batches": 0, "corrupt_primary": 0, "corrupt_backup": 0,
            "archived": [], "fresh_starts": 0, "unreadable": 0, "directory_in_place": 0,
            "backup_copy_errors": 0, "dir_fsync_errors": 0, "lineages_merged": 0,
            "loads": 0, "lock_unavailable": 0, "tier_writes": dict.fromkeys(TIERS, 0),
            "failures_by_tier": {}, "failures_by_error": {}, "last_error": None,
            "last_error_at": None, "last_write_at": None, "loaded_from": None,
        }

    # -- writing ------------------------------------------------------------------------------
    def apply(self, records: list[UsageRecord]) -> str | None:
        """Count ``records`` into the file (from any thread). None when they are counted
        (now or before); else the reason no location took the write. Never raises."""
        try:
            with self._lock, self._file_lock():
                self._refresh()
                assert self._doc is not None
                fresh: dict[str, UsageRecord] = {}
                for r in records:
                    if r.id not in self._recent and r.id not in fresh:
                        fresh[r.id] = r
                skipped = len(records) - len(fresh)
                if skipped:
                    self._c["duplicates_skipped"] += skipped
                    log.info("%d records were counted already (redelivered); not counted again", skipped)
                if not fresh:
                    self._applied(r.id for r in records)
                    return None
                priced = [self._priced(r) for r in fresh.values()]
                error = self._persist(*self._next_doc(priced))
                if error is not None:
                    self._c["retried_batches"] += 1
                    return error
                self._c["records_applied"] += len(fresh)
                self._applied(r.id for r in records)
                return None
        except Exception as exc:  # never let a bug here lose records: they stay in the journal
            log.exception("summary write failed unexpectedly; the records stay in the journal")
            self._failed("unexpected", exc)
            return f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Write the snapshot once more, so that the ``.bak`` holds the same totals as the
        primary after a clean stop (a corrupt primary then loses nothing)."""
        with self._lock:
            try:
                if self._doc is not None and (self._writes_since_load or self._can_absorb()):
                    with self._file_lock():
                        self._refresh()
                        self._persist(*self._next_doc([]))
                    self._writes_since_load = 0
            except Exception:
                log.exception("final summary write failed")
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = None

    def after_fork_child(self) -> None:
        """A lock held by another thread at fork time would never be released here."""
        self._lock = threading.RLock()
        self._lock_fd = None
        self._stamp_seen = b""

    # -- reading ------------------------------------------------------------------------------
    def snapshot(self, pending: MutableMapping[str, UsageRecord] | None = None) -> Snapshot:
        """The file's totals now: re-reads the copies when another process changed them
        (a failed read leaves what is in memory, logged).

        ``pending``: the caller's map of records it handed on but has not seen counted
        (id -> record). Under the lock the snapshot is taken under, the ones the file
        counts are removed from it (counted by another process sharing the journal, or
        not reported to the caller yet) and the others come back in
        :attr:`Snapshot.pending`."""
        with self._lock:
            try:
                with self._file_lock():
                    self._refresh()
            except Exception:
                log.exception("reading the summary failed; using what is in memory")
            doc = self._doc
            parts = ([] if doc is None else [doc.days]) + [d.days for d in self._foreign]
            left: list[UsageRecord] = []
            if pending is not None:
                for r in list(pending.copy().values()):
                    if r.id in self._recent:
                        pending.pop(r.id, None)
                    else:
                        left.append(r)
            return Snapshot(None if doc is None else doc.lineage,
                            0 if doc is None else doc.generation, tuple(parts), tuple(left))

    def today(self) -> Totals:
        """Today's totals (UTC day) in the file."""
        day = datetime.now(UTC).date().isoformat()
        return self.snapshot().totals(day, day)

    def is_counted(self, record_id: str) -> bool:
        """Whether the file counts ``record_id`` among its last ``dedup_window`` records."""
        return record_id in self._recent


    # -- internals -------------------------------------------------------------------------
    def _priced(self, r: UsageRecord) -> UsageRecord:
        if r.cost is not None or self._price is None:
            return r
        try:
            return self._price(r)
        except Exception as exc:  # a pricing bug leaves the call unpriced, never unrecorded
            log.warning("pricing %s/%s failed: %r; counted as unpriced", r.provider, r.model, exc)
            return r

    def _applied(self, ids: Iterable[str]) -> None:
        if self._on_applied is not None:
            self._on_applied(ids)

    def _can_absorb(self) -> bool:
        # while a copy cannot be read, absorbing could take an older generation of a
        # lineage whose newer one is in that copy: reads add the lineages up meanwhile
        return bool(self._foreign) and not self._unreadable

    def _next_doc(self, records: list[UsageRecord]) -> tuple[SummaryDoc, bool]:
        """The snapshot to write: ours plus ``records``, plus the other live lineages when
        they can be absorbed. Absorbing happens only here, under the file lock and in the
        write that records it, so no other process can advance an absorbed lineage."""
        assert self._doc is not None
        doc = self._doc
        merge = self._can_absorb()
        if merge:
            doc = absorb(doc, self._foreign, self.writer, self.dedup_window)
        return with_records(doc, records, self.writer, self.dedup_window), merge

    def _persist(self, doc: SummaryDoc, absorbed: bool = False) -> str | None:
        """Write ``doc`` to the first location that takes it; on success it becomes the
        snapshot in memory. Returns None, or the reason every location refused."""
        data = encode_doc(doc)
        errors = []
        for loc in self.locations:
            blocked = [p for p in loc.files if p in self._blocked]
            if blocked:
                errors.append(f"{loc.tier}: {blocked[0]} holds data that could not be read")
                continue
            try:
                self._write(loc, data)
            except OSError as exc:
                self._failed(loc.tier, exc)
                errors.append(f"{loc.tier} {loc.path}: {_errname(exc)} {exc.strerror or exc}")
                log.warning("summary %s location %s refused the write: %s", loc.tier, loc.path, exc)
                continue
            self._doc = doc
            self._doc_on_disk = True
            if absorbed:
                self._c["lineages_merged"] += len(self._foreign)
                log.warning("summary lineage(s) %s absorbed into %s (generation %d)",
                            ", ".join(f.lineage for f in self._foreign), doc.lineage, doc.generation)
                self._foreign = []
            self._recent = set(doc.recent_ids).union(*(f.recent_ids for f in self._foreign))
            self._writes_since_load += 1
            self._c["writes"] += 1
            self._c["tier_writes"][loc.tier] += 1
            self._c["last_write_at"] = time.time()
            if self._tier_now != loc.tier:
                level = logging.INFO if loc.tier == "primary" else logging.WARNING
                log.log(level, "summary now written to the %s location %s", loc.tier, loc.path)
                self._tier_now = loc.tier
            self._sigs = self._signatures()
            self._stamp_seen = self._write_stamp()
            return None
        reason = "no summary location accepts writes: " + "; ".join(errors)
        log.error("%s; the records stay in the journal and are retried", reason)
        self._tier_now = None
        return reason

    def _write(self, loc: Location, data: bytes) -> None:
        path = loc.path
        parent = path.parent
        parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            self._c["directory_in_place"] += 1
            raise IsADirectoryError(errno.EISDIR, "a directory is in place of the summary file", str(path))
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "the summary file is read-only", str(path))
        tmp = parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            if path.is_file():
                self._keep_previous(loc)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:  # the rename is done and visible; only power loss could undo it
            self._c["dir_fsync_errors"] += 1
            log.warning("fsync of directory %s failed: %s", parent, exc)

    def _keep_previous(self, loc: Location) -> None:
        """The current file becomes ``.bak`` (a hard link: no copy, and the primary name
        never disappears). Failing here costs the previous version only, so it does not
        fail the write."""
        tmp = loc.bak.with_name(f".{loc.bak.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.link(loc.path, tmp)
            os.replace(tmp, loc.bak)
        except OSError as exc:
            self._c["backup_copy_errors"] += 1
            log.warning("keeping the previous version of %s as %s failed: %s", loc.path, loc.bak, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _failed(self, tier: str, exc: BaseException) -> None:
        name = _errname(exc)
        c = self._c
        c["write_failures"] += 1
        c["failures_by_tier"][tier] = c["failures_by_tier"].get(tier, 0) + 1
        c["failures_by_error"][name] = c["failures_by_error"].get(name, 0) + 1
        c["last_error"] = f"{tier}: {name}: {exc}"
        c["last_error_at"] = time.time()

    # -- loading -----------------------------------------------------------------------------
    def _signatures(self) -> tuple:
        return tuple(_sig(p) for loc in self.locations for p in loc.files)

    def _refresh(self) -> None:
        """Re-read the copies when any changed. The stamp in the lock file changes with
        every write of any process (under the lock): stat alone can miss a change when a
        freed inode is reused within one tick of the file system clock."""
        stamp = self._read_stamp()
        if self._doc is None or stamp != self._stamp_seen or self._signatures() != self._sigs:
            self._load()
            self._stamp_seen = stamp

    def _read_stamp(self) -> bytes:
        fd = self._lock_fd
        if fd is None or self._lock_pid != os.getpid():
            return b""
        try:
            return os.pread(fd, 16, 0)
        except OSError:
            return b""

    def _write_stamp(self) -> bytes:
        fd = self._lock_fd
        stamp = uuid.uuid4().bytes
        if fd is None or self._lock_pid != os.getpid():
            return b""
        try:
            os.pwrite(fd, stamp, 0)
        except OSError:  # then only stat tells other processes about the change
            return b""
        return stamp

    def _read(self, path: Path) -> tuple[str, SummaryDoc | None]:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return "missing", None
        except IsADirectoryError:
            return "directory", None
        except OSError as exc:
            self._c["unreadable"] += 1
            log.error("summary copy %s cannot be read (%s); it is left alone and never overwritten", path, exc)
            return "unreadable", None
        try:
            return "ok", decode_doc(data)
        except NewerSummary as exc:
            self._c["unreadable"] += 1
            log.error("summary copy %s was written by a newer usageledger (%s); it is left alone "
                      "and never overwritten", path, exc)
            return "unreadable", None
        except CorruptSummary as exc:
            is_bak = path.name.endswith(".bak")
            self._c["corrupt_backup" if is_bak else "corrupt_primary"] += 1
            archived = self._archive(path)
            log.error(
                "summary %s %s is corrupt (%s); %s", "backup" if is_bak else "file", path, exc,
                f"archived as {archived}" if archived else "it could not be archived",
            )
            return "corrupt", None

    def _archive(self, path: Path) -> Path | None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        try:
            os.rename(path, target)
        except OSError as exc:
            log.error("archiving corrupt %s failed: %s", path, exc)
            return None
        self._c["archived"].append(str(target))
        return target

    def _load(self) -> None:
        self._c["loads"] += 1
        found: list[tuple[SummaryDoc, Path | None]] = []
        unreadable: list[Path] = []
        corrupt = 0
        for loc in self.locations:
            for path in loc.files:
                status, doc = self._read(path)
                if status == "ok":
                    assert doc is not None
                    found.append((doc, path))
                elif status == "unreadable":
                    unreadable.append(path)
                elif status == "corrupt":
                    corrupt += 1
                elif status == "directory" and path == loc.path:
                    log.warning("a directory is in place of summary file %s", path)
        if self._doc is not None and self._doc_on_disk:
            found.append((self._doc, None))  # newer than any copy if a copy was damaged
        live = live_copies(found)
        mine = None
        if self._doc is not None and self._doc_on_disk:
            mine = next((x for x in live if x[0].lineage == self._doc.lineage), None)
        if mine is None and live and not unreadable:
            mine = max(live, key=lambda x: x[0].generation)
        on_disk = mine is not None
        if mine is None:
            # nothing to continue (or an unreadable copy might be newer than what we see):
            # a fresh lineage, which never claims to contain what it could not read
            keep = self._doc is not None and not self._doc_on_disk
            mine = (self._doc if keep else new_doc(self.writer), None)  # type: ignore[assignment]
            if corrupt and not live:
                self._c["fresh_starts"] += 1
                log.error("no valid summary copy is left; starting a fresh summary (lineage %s)",
                          mine[0].lineage)
        doc, where = mine
        others = [d for d, _ in live if d is not doc]
        self._unreadable = set(unreadable)
        self._blocked = set(unreadable)
        if others and unreadable:
            foreign = {d.lineage for d in others}
            self._blocked |= {p for d, p in found if p is not None and d.lineage in foreign}
        if others:
            log.warning(
                "summary copies of %d other lineage(s) found (%s); reads add them up%s",
                len(others), ", ".join(o.lineage for o in others),
                "" if unreadable else ", the next write absorbs them",
            )
        self._doc = doc
        self._doc_on_disk = on_disk
        self._foreign = others
        self._recent = set(doc.recent_ids).union(*(o.recent_ids for o in others))
        if where is not None:
            self._c["loaded_from"] = str(where)
            if where.name.endswith(".bak") or where != self.path:
                log.warning("summary loaded from %s (generation %d)", where, doc.generation)
        self._sigs = self._signatures()
        self._writes_since_load = 0

    # -- cross-process lock -------------------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """flock on a lock file in the first location directory that allows one, so that
        processes sharing the summary apply batches one at a time over fresh reads."""
        fd = self._lock_file()
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_file(self) -> int | None:
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            return self._lock_fd
        self._lock_fd = None  # after fork: flock is shared with the parent's open file
        for loc in self.locations:
            p = loc.path.with_name(f".{self.path.name}.lock")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
                self._lock_pid = os.getpid()
                return self._lock_fd
            except OSError:
                continue
        self._c["lock_unavailable"] += 1
        return None

    # -- introspection -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            c = self._c
            doc = self._doc
            return {
                **{k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                   for k, v in c.items()},
                "tier": self._tier_now,
                "path": next((str(loc.path) for loc in self.locations if loc.tier == self._tier_now), None),
                "locations": {loc.tier: str(loc.path) for loc in self.locations},
                "lineage": None if doc is None else doc.lineage,
                "generation": None if doc is None else doc.generation,
                "foreign_lineages": len(self._foreign),
                "blocked_files": sorted(str(p) for p in self._blocked),
            }
