"""In-process sinks for pipeline tests (the HTTP ones use tests/support/fault_server)."""

from __future__ import annotations

import threading

from usageledger.sinks.base import OK, Reject, Retry, Sink


class CollectSink(Sink):
    """Stores what it is sent; can be told to fail."""

    name = "collect"

    def __init__(self):
        self.lock = threading.Lock()
        self.received: list[str] = []  # every id, with repeats
        self.data: dict[str, bytes] = {}
        self.fail_with: Retry | None = None
        self.reject: set[str] = set()
        self.batches: list[int] = []

    def send(self, batch):
        with self.lock:
            self.batches.append(len(batch))
            if self.fail_with is not None:
                return {i.id: self.fail_with for i in batch}
            out = {}
            for item in batch:
                if item.id in self.reject:
                    out[item.id] = Reject("poison")
                    continue
                self.received.append(item.id)
                self.data[item.id] = item.data
                out[item.id] = OK
            return out

    @property
    def ids(self) -> set[str]:
        with self.lock:
            return set(self.received)
