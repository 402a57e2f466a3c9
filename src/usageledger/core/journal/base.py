"""The Journal contract: a durable list of opaque items with a small state machine.

    ready --claim--> inflight --ack--> (deleted, counted as delivered)
                        |  \\--retry(not_before)--> ready
                        \\----dead(error)--------> dead --requeue--> ready

Items are ``(id, kind, data, attempts)``; the journal never parses ``data``. One
dispatcher at a time holds the lease of a journal (across processes). When a new
holder takes a lease whose previous holder let it expire, the in-flight items of that
holder return to ready; rows held by a live lease holder are never reset.

Beyond the contract, a journal may expose ``read_only`` (True while its storage refuses
writes) with ``copy_out() -> (items, mark)`` and ``mark_copied(mark)``: the recorder then
copies the items into its fallback journal, to be delivered from there. SqliteJournal
does; a journal without them is never treated as read-only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ...errors import UsageLedgerError

__all__ = ["Journal", "JournalItem", "JournalError", "JournalDestinationError", "JournalUnavailableError", "READY", "INFLIGHT", "DEAD", "STATE_NAMES"]

READY, INFLIGHT, DEAD = 0, 1, 2
STATE_NAMES = {READY: "ready", INFLIGHT: "inflight", DEAD: "dead"}
STATE_BY_NAME = {v: k for k, v in STATE_NAMES.items()} | {"queued": READY, "failed": DEAD}


class JournalItem(NamedTuple):
    id: str
    kind: str
    data: bytes
    attempts: int


class JournalError(UsageLedgerError):
    """The journal could not do what was asked (disk full, read-only, corrupt...)."""


class JournalDestinationError(JournalError):
    """The journal belongs to another destination than the pipeline opening it: two
    destinations on one journal would deliver each other's records."""


class JournalUnavailableError(JournalError):
    """No journal on disk accepts the record, and the durability level asked for
    (``committed``, ``fsync``) acknowledges only records on disk: raised by
    ``enqueue()``/``record()`` instead of acknowledging."""


def state_code(state: str | int) -> int:
    if isinstance(state, int) and state in STATE_NAMES:
        return state
    try:
        return STATE_BY_NAME[state]  # type: ignore[index]
    except KeyError:
        raise ValueError(
            f"state must be one of {sorted(STATE_BY_NAME)}, got {state!r}"
        ) from None


class Journal:
    """Base contract. Every method is safe to call from any thread of one process;
    the SQLite journal is also safe across processes."""

    #: where the journal lives, for messages (a path or a description)
    location: str = "memory"
    #: where its records go (a sink's ``destination``), recorded by a persistent journal
    #: when first opened for a pipeline; a journal opened for another destination raises
    #: JournalDestinationError. None: not recorded (memory journals, older files)
    destination: str | None = None

    def append(self, items: list[tuple[str, str, bytes]]) -> None:
        """Store ``(id, kind, data)`` items as ready, in one transaction (durable as the
        journal was opened: the SQLite journal fsyncs each commit when ``fsync=True``)."""
        raise NotImplementedError

    def claim(self, n: int, owner: str) -> list[JournalItem]:
        """Mark up to ``n`` ready items whose ``not_before`` has passed as in flight for
        ``owner`` and return them, oldest first. ``attempts`` counts this claim."""
        raise NotImplementedError

    def ack(self, ids: list[str]) -> None:
        """Delivered: remove the claimed items and count them."""
        raise NotImplementedError

    def retry(self, ids: list[str], error: str, not_before: float) -> None:
        """Back to ready, not to be claimed before ``not_before`` (epoch seconds)."""
        raise NotImplementedError

    def dead(self, ids: list[str], error: str) -> None:
        """Rejected for good: keep with the error for inspection and requeue."""
        raise NotImplementedError

    def requeue(self, ids: list[str] | None = None) -> int:
        """Dead items (all, or those ``ids``) back to ready with attempts reset."""
        raise NotImplementedError

    def purge(self, state: str | int, older_than: float | None = None) -> int:
        """Delete the items in ``state`` (optionally only those created before
        ``older_than``, epoch seconds); returns how many."""
        raise NotImplementedError

    def items(self, state: str | int, limit: int = 100) -> list[dict[str, Any]]:
        """Inspect items in one state: id, kind, data, attempts, created, not_before,
        last_error, oldest first."""
        raise NotImplementedError

    def retrying(self, limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
        """Ready items that failed a delivery and wait out their backoff (``not_before``
        set): how many, and the ``limit`` next due (keys as :meth:`items`), soonest first."""
        raise NotImplementedError

    def recent_dead(self, limit: int = 10) -> list[dict[str, Any]]:
        """The ``limit`` items dead-lettered last, newest first: the keys of :meth:`items`
        plus ``died`` (epoch seconds)."""
        raise NotImplementedError

    def has_pending(self) -> bool:
        """True while any item is ready or in flight (cheap: used to wait for a flush)."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """ready, inflight, dead, delivered, retried, oldest_ready_created,
        next_not_before, lease_holder, lease_expires."""
        raise NotImplementedError

    def acquire(self, holder: str, lease_s: float) -> bool:
        """Take or renew the dispatcher lease for ``lease_s`` seconds; never blocks.

        ``holder`` names one dispatcher; dispatchers name themselves ``host:pid:tag``.
        The lease is refused while another holder's lease has not expired, *unless* the
        journal can tell that holder is dead (the SQLite journal: its process no longer
        holds the OS lock on ``<journal>.lease`` and its pid is gone from this host); a
        backend without such a signal uses the expiry alone. On taking over:

        - from a dead holder, or where no lease was recorded (released): that holder's
          in-flight items return to ready with the attempt of their claim undone (the
          claim got no answer, so it must not count towards ``max_attempts``);
        - from a live holder whose lease expired (hung): its in-flight items return to
          ready, attempts kept.

        A live holder's in-flight rows are never reset."""
        raise NotImplementedError

    def release(self, holder: str) -> None:
        """Give the lease up; this holder's in-flight items return to ready (attempts
        kept), and answers to its earlier claims that arrive later settle nothing."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources held by this process."""
