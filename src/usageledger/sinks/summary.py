"""SummarySink: daily usage totals in a JSON file, written atomically, with failure tiers.

The file holds one *snapshot*: totals per UTC day of each record's own timestamp, then
per provider, then per model (calls, token sums, exact decimal cost strings). A snapshot
belongs to a *lineage* (a random id) and carries a *generation* that grows by one per
write. Every write is a whole new snapshot: temp file in the same directory, fsync,
the previous version hard-linked to ``<name>.bak``, rename, fsync of the directory.

Exactly once: a batch is applied to a copy of the snapshot; the copy replaces the one in
memory only after the file write succeeded, and only then does the dispatcher ack the
records. The snapshot also keeps the ids of the last ``dedup_window`` records it counted,
so a batch redelivered after a write that succeeded but whose ack did not (crash, journal
error) is recognised and not counted twice.

Failure tiers: the primary path, then a backup location, then an emergency location (each
with its own ``.bak``). A write goes to the first one that accepts it; when none does,
``send`` returns Retry and the records stay in the journal. Because every write is a full
snapshot, reading never adds locations up: of the copies of one lineage the highest
generation wins. Snapshots of *different* lineages (a file that was unreadable when a
fresh lineage had to start, a file copied in by hand) hold disjoint records: they are
added up, and the next write absorbs them (``absorbed`` records which lineage up to which
generation a snapshot contains, so an absorbed copy is never counted again). A file that
exists but cannot be read is never overwritten.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from .._files import write_all
from ..errors import UsageLedgerError
from ..records import KIND_USAGE, UsageRecord, decode_usage, encode
from ..totals import Totals
from .base import OK, Result, Retry, Sink, decode_batch

if TYPE_CHECKING:
    from ..journal.base import JournalItem

__all__ = ["SummarySink", "SummaryDoc", "Entry", "Location", "FORMAT", "VERSION", "TIERS"]

log = logging.getLogger("usageledger.summary")

FORMAT = "usageledger-summary"
VERSION = 1
TIERS = ("primary", "backup", "emergency")

NonNeg = Annotated[int, msgspec.Meta(ge=0)]


class Entry(msgspec.Struct, omit_defaults=True):
    """Totals of one (day, provider, model). Never mutated once built: snapshots share
    entries, so applying a batch copies only what it touches."""

    calls: NonNeg
    input_tokens: NonNeg
    output_tokens: NonNeg
    #: USD, exact, of the priced calls
    cost: Decimal
    cache_read_tokens: NonNeg = 0
    cache_write_tokens: NonNeg = 0
    reasoning_tokens: NonNeg = 0
    #: calls whose cost is unknown (model without a price): not in ``cost``
    unpriced_calls: NonNeg = 0
    #: costs recorded in other currencies than USD, per currency
    cost_other: dict[str, Decimal] = {}

    def totals(self) -> Totals:
        """These totals as the package's one totals type (cost per currency)."""
        costs = dict(self.cost_other)
        if self.cost or not costs:
            costs["USD"] = costs.get("USD", Decimal(0)) + self.cost
        return Totals(self.calls, self.input_tokens, self.output_tokens, self.cache_read_tokens,
                      self.cache_write_tokens, self.reasoning_tokens, self.unpriced_calls, costs)


Days = dict[str, dict[str, dict[str, Entry]]]


class SummaryDoc(msgspec.Struct):
    format: str
    version: int
    lineage: str
    generation: NonNeg
    updated_at: str
    writer: str
    days: Days
    absorbed: dict[str, int] = {}
    recent_ids: list[str] = []


_decoder = msgspec.json.Decoder(SummaryDoc)


class CorruptSummary(UsageLedgerError, ValueError):
    pass


class NewerSummary(UsageLedgerError, ValueError):
    """Written by a newer usageledger: valid for it, so never archived nor overwritten."""


def decode_doc(data: bytes) -> SummaryDoc:
    """Parse and validate a snapshot; CorruptSummary says what is wrong."""
    try:
        doc = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        version = _version_of(data)
        if version is not None and version > VERSION:
            raise NewerSummary(f"format version {version}, this code reads {VERSION}") from None
        raise CorruptSummary(str(exc)) from None
    if doc.format != FORMAT:
        raise CorruptSummary(f"format is {doc.format!r}, expected {FORMAT!r}")
    if doc.version > VERSION:
        raise NewerSummary(f"format version {doc.version}, this code reads {VERSION}")
    if doc.version != VERSION:
        raise CorruptSummary(f"version is {doc.version!r}, this code reads {VERSION}")
    for day, providers in doc.days.items():
        if len(day) != 10 or day[4] != "-" or day[7] != "-":
            raise CorruptSummary(f"day key {day!r} is not YYYY-MM-DD")
        for models in providers.values():
            for entry in models.values():
                for d in (entry.cost, *entry.cost_other.values()):
                    if not d.is_finite() or d < 0:
                        raise CorruptSummary(f"cost {d!r} on {day} is not a finite non-negative number")
    return doc


class _Versioned(msgspec.Struct):
    format: str
    version: int


def _version_of(data: bytes) -> int | None:
    try:
        head = msgspec.json.decode(data, type=_Versioned)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return head.version if head.format == FORMAT else None


def encode_doc(doc: SummaryDoc) -> bytes:
    return encode(doc)


def new_doc(writer: str) -> SummaryDoc:
    return SummaryDoc(FORMAT, VERSION, uuid.uuid4().hex, 0, _now_iso(), writer, {})


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def merge_days(parts: Iterable[Days]) -> Days:
    """Sum several snapshots' days into new ones (inputs untouched)."""
    out: Days = {}
    for days in parts:
        for day, providers in days.items():
            od = out.setdefault(day, {})
            for provider, models in providers.items():
                op = od.setdefault(provider, {})
                for model, e in models.items():
                    prev = op.get(model)
                    op[model] = e if prev is None else add_entries(prev, e)
    return out


def add_entries(a: Entry, b: Entry) -> Entry:
    other = dict(a.cost_other)
    for cur, v in b.cost_other.items():
        other[cur] = other.get(cur, Decimal(0)) + v
    return Entry(
        a.calls + b.calls, a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens,
        a.cost + b.cost, a.cache_read_tokens + b.cache_read_tokens,
        a.cache_write_tokens + b.cache_write_tokens, a.reasoning_tokens + b.reasoning_tokens,
        a.unpriced_calls + b.unpriced_calls, other,
    )


def entry_of(record: UsageRecord) -> Entry:
    cost, other, unpriced = Decimal(0), {}, 0
    if record.cost is None:
        unpriced = 1
    elif record.currency == "USD":
        cost = record.cost
    else:
        other = {record.currency: record.cost}
    return Entry(
        1, record.input_tokens, record.output_tokens, cost, record.cache_read_tokens,
        record.cache_write_tokens, record.reasoning_tokens, unpriced, other,
    )


def day_of(record: UsageRecord) -> str:
    """The UTC day of the record's own timestamp (records keep timestamps in UTC)."""
    return record.timestamp.date().isoformat()


def apply_records(days: Days, records: Iterable[UsageRecord]) -> Days:
    """New days with ``records`` added, copying only the day/provider dicts touched."""
    out = dict(days)
    copied: set[tuple[str, str | None]] = set()
    for r in records:
        day = day_of(r)
        if (day, None) not in copied:
            out[day] = dict(out.get(day, {}))
            copied.add((day, None))
        providers = out[day]
        if (day, r.provider) not in copied:
            providers[r.provider] = dict(providers.get(r.provider, {}))
            copied.add((day, r.provider))
        models = providers[r.provider]
        e = entry_of(r)
        prev = models.get(r.model)
        models[r.model] = e if prev is None else add_entries(prev, e)
    return out


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
    import platformdirs

    tag = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"{path.stem}-{tag}{path.suffix or '.json'}"
    bdir = Path(backup_dir) if backup_dir is not None else (
        Path(platformdirs.user_data_dir("usageledger")) / "summary-backup")
    edir = Path(emergency_dir) if emergency_dir is not None else (
        Path(platformdirs.user_cache_dir("usageledger")) / "emergency")
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


class SummarySink(Sink):
    """A Sink keeping daily totals in a JSON file. ``send`` never loops or sleeps: a write
    every tier refuses returns Retry and the dispatcher backs off.

    ``price(record) -> record`` fills in a missing cost; ``on_applied(ids)`` is called
    under the sink lock once records are durably counted (or known to be counted already),
    so a reader holding :meth:`locked` sees each record either in the snapshot or not."""

    name = "summary"

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
        if dedup_window < 0:
            raise ValueError(f"dedup_window must be >= 0, got {dedup_window!r}")
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
            "rejected": 0, "retried_batches": 0, "corrupt_primary": 0, "corrupt_backup": 0,
            "archived": [], "fresh_starts": 0, "unreadable": 0, "directory_in_place": 0,
            "backup_copy_errors": 0, "dir_fsync_errors": 0, "lineages_merged": 0,
            "loads": 0, "lock_unavailable": 0, "tier_writes": dict.fromkeys(TIERS, 0),
            "failures_by_tier": {}, "failures_by_error": {}, "last_error": None,
            "last_error_at": None, "last_write_at": None, "loaded_from": None,
        }

    # -- the Sink contract ------------------------------------------------------------------

    @property
    def destination(self) -> str:
        return f"summary file {self.path}"
    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        decoded, results = decode_batch(
            batch, KIND_USAGE, decode_usage, taker="a summary sink", noun="usage record"
        )
        records = [r for _, r in decoded]
        if len(results):
            self._c["rejected"] += len(results)
        if records:
            error = self.apply(records)
            verdict: Result = OK if error is None else Retry(None, error)
            for r in records:
                results[r.id] = verdict
        return results

    def apply(self, records: list[UsageRecord]) -> str | None:
        """Count ``records`` into the file (from any thread). None when they are counted
        (now or before); else the reason no location took the write."""
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

    # -- reading -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[list[Days]]:
        """Hold the sink lock and give the days of every live snapshot (ours first):
        the totals are their sum. Re-reads the files when another process changed them."""
        with self._lock:
            try:
                with self._file_lock():
                    self._refresh()
            except Exception:
                log.exception("reading the summary failed; using what is in memory")
            parts = [] if self._doc is None else [self._doc.days]
            parts.extend(d.days for d in self._foreign)
            yield parts

    def days(self) -> Days:
        with self.locked() as parts:
            return parts[0] if len(parts) == 1 else merge_days(parts)

    def is_counted(self, record_id: str) -> bool:
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
        absorb = self._can_absorb()
        if absorb:
            doc = self._absorb(doc, self._foreign)
        ids = doc.recent_ids
        if records and self.dedup_window:
            ids = [*ids, *(r.id for r in records)][-self.dedup_window:]
        return SummaryDoc(
            FORMAT, VERSION, doc.lineage, doc.generation + 1, _now_iso(), self.writer,
            apply_records(doc.days, records) if records else doc.days, doc.absorbed, ids,
        ), absorb

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
        newest: dict[str, tuple[SummaryDoc, Path | None]] = {}
        for doc, path in found:
            cur = newest.get(doc.lineage)
            if cur is None or doc.generation > cur[0].generation:
                newest[doc.lineage] = (doc, path)
            elif doc.generation == cur[0].generation and doc.writer != cur[0].writer:
                log.error("two copies of summary lineage %s generation %d by different writers "
                          "(%s, %s); using the first", doc.lineage, doc.generation, cur[0].writer, doc.writer)
        live = [
            (d, p) for d, p in newest.values()
            if not any(o.absorbed.get(d.lineage, -1) >= d.generation for o, _ in newest.values() if o is not d)
        ]
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

    def _absorb(self, doc: SummaryDoc, others: list[SummaryDoc]) -> SummaryDoc:
        absorbed = dict(doc.absorbed)
        ids = list(doc.recent_ids)
        for o in others:
            for lineage, gen in (*o.absorbed.items(), (o.lineage, o.generation)):
                absorbed[lineage] = max(absorbed.get(lineage, -1), gen)
            ids.extend(o.recent_ids)
        return SummaryDoc(
            FORMAT, VERSION, doc.lineage, doc.generation, doc.updated_at, self.writer,
            merge_days([doc.days, *(o.days for o in others)]), absorbed,
            list(dict.fromkeys(ids))[-self.dedup_window:] if self.dedup_window else [],
        )

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
