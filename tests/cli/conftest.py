"""Fixtures for the CLI tests: a journal in known states, a usage store with known
totals, and `cli(...)`, which runs the real entry point in-process."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from usageledger.cli import main
from usageledger.journal import SqliteJournal
from usageledger.records import UsageRecord, make_usage_record
from usageledger.storage import create_storage

VENV_BIN = Path(sys.executable).parent


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch) -> Callable[..., Result]:
    """``cli("stats", db, stdin="y\\n")`` runs ``usageledger`` and returns code, stdout, stderr."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: object, stdin: str = "") -> Result:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def journal_db(tmp_path) -> Path:
    """A journal with 6 ready (2 of them waiting out a retry), 1 in flight, 2 dead,
    1 delivered; the lease held by ``worker-1``."""
    path = tmp_path / "queue.db"
    j = SqliteJournal(path)
    j.append([(f"item-{k}", "raw", b'{"n": %d}' % k) for k in range(10)])
    assert j.acquire("worker-1", 60)
    assert len(j.claim(6, "worker-1")) == 6
    j.retry(["item-0", "item-1"], "HTTP 503: collector unavailable", time.time() + 120)
    j.dead(["item-2"], "HTTP 400: model is required")
    j.dead(["item-3"], "HTTP 422: input_tokens must be >= 0")
    j.ack(["item-4"])
    j.close()
    return path


DAY0 = datetime(2026, 3, 1, tzinfo=UTC)


def usage_records() -> list[UsageRecord]:
    """Three days, two models, one record without a price, cache tokens, audio and 1-hour
    cache-write parts and a service tier on one, and a cost finer than a nano-unit (summed
    exactly all the same)."""
    out = []
    for day in range(3):
        for k in range(10):
            out.append(make_usage_record(
                "openai" if k % 2 else "anthropic", "gpt-4o" if k % 2 else "claude-sonnet",
                100 * (k + 1), 10 * (k + day),
                cache_read_tokens=5 if k == 3 else 0,
                **({"cache_write_tokens": 40, "cache_write_1h_tokens": 30, "input_audio_tokens": 50,
                    "output_audio_tokens": 4, "service_tier": "batch"} if (day, k) == (2, 4) else {}),
                cost=None if (day, k) == (1, 7) else Decimal("0.0125") * (k + 1) * (day + 1),
                timestamp=DAY0 + timedelta(days=day, hours=k),
                user_id=f"user-{k % 3}",
                tags={"team": "search"} if k < 5 else {},
                id=f"rec-{day}-{k}",
            ))
    out.append(make_usage_record("openai", "gpt-4o", 1, 1, cost=Decimal("0.0000000000001"),
                                 timestamp=DAY0 + timedelta(days=2, hours=23), id="rec-tiny",
                                 payload={"request": {"temperature": 0.5}}))
    return out


@pytest.fixture
def store_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    store = create_storage(url)
    store.save_many(usage_records())
    store.close()
    return url


def totals(records) -> dict:
    """Count, token sums and exact cost of records, computed here (not by a backend)."""
    t = {"count": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cost": Decimal(0)}
    for r in records:
        t["count"] += 1
        t["input_tokens"] += r.input_tokens
        t["output_tokens"] += r.output_tokens
        t["cache_read_tokens"] += r.cache_read_tokens
        t["cost"] += r.cost or 0
    return t
