"""Exporting 1,000,000 records streams in bounded memory, and the file reads back to the
same totals (count, tokens, exact Decimal cost)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.cli.conftest import VENV_BIN
from usageledger.export import read_export
from usageledger.records import UsageRecord
from usageledger.storage import create_storage

N = 1_000_000
RSS_LIMIT_KB = 200 * 1024

# Peak RSS of one command, measured by a small parent: a forked child's ru_maxrss starts
# from its parent's RSS at fork time, so the parent must not be this (large) test process.
_MEASURE = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _fill(url: str) -> dict:
    """Save N records in big batches; returns their totals as computed here."""
    store = create_storage(url)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    models = ("gpt-4o", "gpt-4o-mini", "claude-sonnet")
    want = {"count": 0, "input_tokens": 0, "output_tokens": 0, "cost": Decimal(0)}
    batch = 50_000
    for start in range(0, N, batch):
        recs = []
        for i in range(start, start + batch):
            cost = None if i % 101 == 0 else Decimal(i % 977) / 100_000
            recs.append(UsageRecord(
                f"r{i:07d}", base + timedelta(seconds=(i * 7) % (86400 * 30)), "openai",
                models[i % 3], i % 1000, i % 500, 0, 0, 0, cost,
            ))
            want["input_tokens"] += i % 1000
            want["output_tokens"] += i % 500
            want["cost"] += cost or 0
        want["count"] += len(store.save_many(recs))
    store.close()
    return want


def test_export_of_a_million_records_is_streamed(tmp_path):
    url = f"sqlite:///{tmp_path / 'big.db'}"
    want = _fill(url)
    assert want["count"] == N

    out = tmp_path / "big.jsonl"
    with open(tmp_path / "stderr.txt", "w") as err:
        measured = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(VENV_BIN / "usageledger"), "export",
             "--storage", url, "--format", "jsonl", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=err, text=True, timeout=600,
        )
    code, peak_kib = map(int, measured.stdout.split())
    log = (tmp_path / "stderr.txt").read_text()
    assert code == 0, log
    assert f"exported {N:,} records" in log
    assert peak_kib < RSS_LIMIT_KB, f"peak RSS {peak_kib} KiB"
    # the bound means something: the output is larger than the memory the export used
    assert out.stat().st_size > peak_kib * 1024

    got = {"count": 0, "input_tokens": 0, "output_tokens": 0, "cost": Decimal(0)}
    ids = set()
    for rec in read_export(out):
        got["count"] += 1
        got["input_tokens"] += rec.input_tokens
        got["output_tokens"] += rec.output_tokens
        got["cost"] += rec.cost or 0
        ids.add(rec.id)
    assert got == want
    assert len(ids) == N  # no record twice (pages did not overlap)
