"""Helpers for the tracker tests: trackers in tmp dirs, expected totals, real faults."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from usageledger.sinks.summary import SummarySink
from usageledger.tracker import UsageTracker, _summarise

#: small waits: faults clear within a test, so backoff must stay short
FAST = dict(flush_interval=0.05, flush_size=10, max_backoff=0.2, exit_timeout=2.0)


def tracker(tmp_path: Path, name: str = "data/usage.json", **kw) -> UsageTracker:
    opts = {**FAST, "backup_dir": tmp_path / "backup", "emergency_dir": tmp_path / "emergency", **kw}
    return UsageTracker(tmp_path / name if not os.path.isabs(name) else name, **opts)


class Expect:
    """What the totals must be: the sum of everything the test recorded."""

    def __init__(self) -> None:
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = Decimal(0)
        self.by_day: dict[str, int] = {}

    def record(self, t: UsageTracker, i: int, *, model: str = "gpt-4o", provider: str = "openai",
               timestamp: datetime | None = None) -> str:
        cost = Decimal(i % 7) / Decimal(1000) + Decimal("0.000001")
        rid = t.record(model, i, 2 * i + 1, provider=provider, cost=cost, timestamp=timestamp)
        self.calls += 1
        self.input_tokens += i
        self.output_tokens += 2 * i + 1
        self.cost += cost
        day = (timestamp or datetime.now(UTC)).astimezone(UTC).date().isoformat()
        self.by_day[day] = self.by_day.get(day, 0) + 1
        return rid

    def many(self, t: UsageTracker, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            self.record(t, i)

    def write(self, t: UsageTracker, n: int, start: int = 0) -> None:
        """Record ``n`` calls and flush them into the file."""
        self.many(t, n, start)
        assert t.flush(10)

    def check(self, summary: dict) -> None:
        got = (summary["calls"], summary["input_tokens"], summary["output_tokens"], summary["cost"])
        want = (self.calls, self.input_tokens, self.output_tokens, self.cost)
        assert got == want, f"totals {got} != recorded {want}"
        assert {d: v["calls"] for d, v in summary["by_day"].items()} == self.by_day


def file_summary(t: UsageTracker) -> dict:
    """Totals as a new process would read them from the files (all locations)."""
    locs = {loc.tier: loc.path.parent for loc in t.sink.locations}
    sink = SummarySink(t.storage_path, backup_dir=locs["backup"], emergency_dir=locs["emergency"])
    return _summarise([sink.days()], None, None)


@contextlib.contextmanager
def immutable(*paths: Path):
    """chattr +i: the kernel refuses writes, renames and new entries even to root."""
    for p in paths:
        subprocess.run(["chattr", "+i", str(p)], check=True)
    try:
        yield
    finally:
        for p in paths:
            subprocess.run(["chattr", "-i", str(p)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` (a small tmpfs) until ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler
