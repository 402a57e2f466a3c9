"""In-memory journal (durability="memory"): the same state machine, nothing on disk."""

from __future__ import annotations

import threading
import time
from typing import Any

from .base import DEAD, INFLIGHT, READY, Journal, JournalItem, state_code


class _Row:
    __slots__ = (
        "seq", "id", "kind", "data", "state", "attempts", "not_before", "created", "last_error",
        "owner", "died",
    )

    def __init__(self, seq: int, id_: str, kind: str, data: bytes, created: float):
        self.seq, self.id, self.kind, self.data, self.created = seq, id_, kind, data, created
        self.state, self.attempts, self.not_before = READY, 0, 0.0
        self.last_error: str | None = None
        self.owner: str | None = None
        self.died: float | None = None


class MemoryJournal(Journal):
    location = "memory"

    def __init__(self) -> None:
        self._rows: dict[int, _Row] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._delivered = 0
        self._retried = 0
        self._lease: tuple[str, float] | None = None

    def append(self, items: list[tuple[str, str, bytes]]) -> None:
        now = time.time()
        with self._lock:
            for id_, kind, data in items:
                self._seq += 1
                self._rows[self._seq] = _Row(self._seq, id_, kind, data, now)

    def claim(self, n: int, owner: str) -> list[JournalItem]:
        now = time.time()
        with self._lock:
            ready = [r for r in self._rows.values() if r.state == READY and r.not_before <= now]
            ready.sort(key=lambda r: (r.not_before, r.seq))
            out = []
            for r in ready[:n]:
                r.state, r.owner = INFLIGHT, owner
                r.attempts += 1
                out.append(JournalItem(r.id, r.kind, r.data, r.attempts))
            return out

    def _claimed(self, ids: list[str]) -> list[_Row]:
        wanted = set(ids)
        return [r for r in self._rows.values() if r.state == INFLIGHT and r.id in wanted]

    def ack(self, ids: list[str]) -> None:
        with self._lock:
            for r in self._claimed(ids):
                del self._rows[r.seq]
                self._delivered += 1

    def retry(self, ids: list[str], error: str, not_before: float) -> None:
        with self._lock:
            for r in self._claimed(ids):
                r.state, r.owner, r.not_before, r.last_error = READY, None, not_before, error
                self._retried += 1

    def dead(self, ids: list[str], error: str) -> None:
        with self._lock:
            now = time.time()
            for r in self._claimed(ids):
                r.state, r.owner, r.last_error, r.died = DEAD, None, error, now

    def requeue(self, ids: list[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)
        n = 0
        with self._lock:
            for r in self._rows.values():
                if r.state == DEAD and (wanted is None or r.id in wanted):
                    r.state, r.attempts, r.not_before, r.last_error = READY, 0, 0.0, None
                    n += 1
        return n

    def purge(self, state: str | int, older_than: float | None = None) -> int:
        code = state_code(state)
        with self._lock:
            gone = [
                s for s, r in self._rows.items()
                if r.state == code and (older_than is None or r.created < older_than)
            ]
            for s in gone:
                del self._rows[s]
        return len(gone)

    def items(self, state: str | int, limit: int = 100) -> list[dict[str, Any]]:
        code = state_code(state)
        with self._lock:
            rows = sorted((r for r in self._rows.values() if r.state == code), key=lambda r: (r.not_before, r.seq))
            return [_describe(r) for r in rows[:limit]]

    def retrying(self, limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            rows = sorted(
                (r for r in self._rows.values() if r.state == READY and r.not_before > 0),
                key=lambda r: (r.not_before, r.seq),
            )
            return len(rows), [_describe(r) for r in rows[:limit]]

    def recent_dead(self, limit: int = 10) -> list[dict[str, Any]]:
        with self._lock:
            rows = sorted(
                (r for r in self._rows.values() if r.state == DEAD),
                key=lambda r: (r.died or 0.0, r.seq),
                reverse=True,
            )
            return [_describe(r) | {"not_before": 0.0, "died": r.died} for r in rows[:limit]]

    def has_pending(self) -> bool:
        with self._lock:
            return any(r.state != DEAD for r in self._rows.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = {READY: 0, INFLIGHT: 0, DEAD: 0}
            oldest = None
            nxt = None
            for r in self._rows.values():
                counts[r.state] += 1
                if r.state == READY:
                    oldest = r.created if oldest is None else min(oldest, r.created)
                    if r.not_before > 0:
                        nxt = r.not_before if nxt is None else min(nxt, r.not_before)
            return {
                "ready": counts[READY], "inflight": counts[INFLIGHT], "dead": counts[DEAD],
                "delivered": self._delivered, "retried": self._retried,
                "oldest_ready_created": oldest, "next_not_before": nxt,
                "lease_holder": self._lease[0] if self._lease else None,
                "lease_expires": self._lease[1] if self._lease else None,
            }

    def acquire(self, holder: str, lease_s: float) -> bool:
        now = time.time()
        with self._lock:
            if self._lease and self._lease[0] != holder and self._lease[1] > now:
                return False
            if self._lease is None or self._lease[0] != holder:
                for r in self._rows.values():
                    if r.state == INFLIGHT and r.owner != holder:
                        r.state, r.owner = READY, None
                        if self._lease is None:  # released: the claim got no answer
                            r.attempts = max(r.attempts - 1, 0)
            self._lease = (holder, now + lease_s)
            return True

    def release(self, holder: str) -> None:
        with self._lock:
            for r in self._rows.values():
                if r.state == INFLIGHT and r.owner == holder:
                    r.state, r.owner = READY, None
            if self._lease and self._lease[0] == holder:
                self._lease = None


def _describe(r: _Row) -> dict[str, Any]:
    return {
        "id": r.id, "kind": r.kind, "data": r.data, "attempts": r.attempts,
        "created": r.created, "not_before": r.not_before,
        "last_error": r.last_error, "owner": r.owner,
    }
