"""`usageledger reprice` killed with SIGKILL part way, then run again, gives exactly the
result of one uninterrupted run (SQLite and PostgreSQL; real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from tests.prices.test_reprice import GROUPINGS
from usageledger.pricebook import PriceBook, entry_json, parse_price
from usageledger.records import make_usage_record
from usageledger.storage import create_storage

N = 20_000


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from usageledger.cli import main; sys.exit(main())", *args]


def _unknown(store) -> int:
    # aggregate rows are per currency: repriced EUR records make a row of their own
    return sum(row["unknown_cost"] for row in store.aggregate(()))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_reprice_killed_then_run_again(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path}/usage.db" if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = create_storage(url)
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    recs = [msgspec.structs.replace(
        make_usage_record("acme", f"ft-{i % 3}", 100 + i, i % 50, user_id=f"u{i % 7}", tags={"t": str(i % 2)}),
        timestamp=t0 + timedelta(seconds=97 * i)) for i in range(N)]
    store.save_many(recs)
    for m in range(3):
        store.put_price("acme", f"ft-{m}", "", entry_json(parse_price(
            {"input_per_mtok": f"1.{m}", "output_per_mtok": "3.3333"})[1]))
    store.put_price("acme", "ft-1", "2025-03-05", entry_json(parse_price(
        {"input_per_mtok": "0.7", "output_per_mtok": "2", "currency": "EUR"})[1]))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cli("reprice", "--storage", url, "--batch-size", "100"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = _unknown(store)
        if done < N - 300:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = _unknown(store)
    assert 0 < left < N, f"the kill should land part way, {left} of {N} left"

    again = subprocess.run(cli("reprice", "--storage", url), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    book = PriceBook(store)
    expected = [msgspec.structs.replace(r, cost=book.cost(r)[0], currency=book.cost(r)[1]) for r in recs]
    fresh = create_storage("memory")
    fresh.save_many(expected)
    got = {r.id: (r.cost, r.currency) for r in store.iter_records()}
    assert got == {r.id: (r.cost, r.currency) for r in expected}
    for g in GROUPINGS[:6]:
        assert store.aggregate(g) == fresh.aggregate(g), g
    store.close()
