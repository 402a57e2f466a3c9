"""Dashboard latency at scale. Run by hand:
`.venv/bin/python bench/bench_dashboard.py [--records N]` (default 1,000,000).

Loads N records (30 days, 10 models, 1,000 users, customers and a tag) into a SQLite
store, then times each dashboard view as a browser asks for it (the last 30 days, and one
filtered view) through the collector app in-process (no network), median of several
calls. Baseline, in the same run on the same store: `/api/v1/summary?group_by=day`, the
cheapest aggregate answer, which the hourly rollups serve. Each line prints the page's
median and its ratio to that baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from bench.bench_storage import DAYS, T0, make_records  # noqa: E402
from usageledger.server.app import create_app  # noqa: E402
from usageledger.storage import create_storage  # noqa: E402


def median_s(fn: Callable[[], object], runs: int = 7) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--db", help="reuse a store an earlier run loaded (its path is printed)")
    args = ap.parse_args()
    n = args.records
    if args.db:
        store = create_storage(f"sqlite:///{args.db}")
        print(f"reusing {args.db}: {store.count():,} records")
    else:
        work = Path(tempfile.mkdtemp(prefix="ul-dash-bench-"))
        store = create_storage(f"sqlite:///{work / 'u.db'}")
        t = time.perf_counter()
        recs = make_records(n)
        for i in range(0, n, 20_000):
            store.save_many([msgspec.structs.replace(r, customer_key=f"customer-{j % 50}")
                             for j, r in enumerate(recs[i:i + 20_000], i)])
        print(f"loaded {n:,} records into {work / 'u.db'} in {time.perf_counter() - t:.1f} s")
    since = T0.date().isoformat()
    until = (T0.date().fromordinal(T0.date().toordinal() + DAYS - 1)).isoformat()
    window = f"since={since}&until={until}"
    client = TestClient(create_app(store), client=("127.0.0.1", 50000))
    base = median_s(lambda: client.get(f"/api/v1/summary?group_by=day&{window}"))
    print(f"baseline /api/v1/summary?group_by=day: {base * 1000:.1f} ms")
    print("| view | median ms | ratio to baseline |\n|---|---:|---:|")
    for label, path in (
        ("overview, 30 days", f"/?{window}"),
        ("overview, one user", f"/?{window}&user_id=user-7"),
        ("overview, one model, hourly, 2 days", f"/?since={since}&until={since}&model=model-3&bucket=hour"),
        ("records, page 1", f"/records?{window}"),
        ("records, page 100", f"/records?{window}&page=100"),
        ("runs", "/runs"),
        ("delivery", "/health"),
    ):
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        ms = median_s(lambda path=path: client.get(path))
        print(f"| {label} | {ms * 1000:.1f} | {ms / base:.1f}x |")
    # the queries one overview page runs, each as the API answers it
    print("\n| query of the overview (as /api/v1/summary) | median ms |\n|---|---:|")
    for group_by in ("day", "provider,model", "user_id", "customer_key", "tag:env"):
        path = f"/api/v1/summary?group_by={group_by}&{window}"
        ms = median_s(lambda path=path: client.get(path))
        print(f"| group_by={group_by} | {ms * 1000:.1f} |")
    store.close()


if __name__ == "__main__":
    main()
