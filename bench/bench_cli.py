"""CLI benchmarks (issue 7). Run by hand: `.venv/bin/python bench/bench_cli.py [--quick]`.

1. export throughput (JSON Lines, CSV) against the baseline of reading the same records
   through ``iter_records`` and writing nothing;
2. the cost of offset paging: the last page of a full scan against the first page;
3. peak RSS of `usageledger export` against `usageledger --help` (interpreter + imports);
4. `usageledger report` (aggregate + chart) against a bare ``aggregate`` call.

Every figure is printed with its baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usageledger.export import export_records  # noqa: E402
from usageledger.records import UsageRecord  # noqa: E402
from usageledger.storage import create_storage  # noqa: E402

BIN = Path(sys.executable).parent
ROWS: list[str] = []


def row(label: str, value: str, baseline: str, ratio: str) -> None:
    line = f"| {label} | {value} | {baseline} | {ratio} |"
    ROWS.append(line)
    print(line, flush=True)


def fill(url: str, n: int) -> None:
    store = create_storage(url)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    models = ("gpt-4o", "gpt-4o-mini", "claude-sonnet")
    for start in range(0, n, 50_000):
        store.save_many([
            UsageRecord(f"r{i:07d}", base + timedelta(seconds=(i * 7) % (86400 * 30)), "openai",
                        models[i % 3], i % 1000, i % 500, 0, 0, 0, Decimal(i % 977) / 100_000)
            for i in range(start, min(n, start + 50_000))
        ])
    store.close()


# a forked child's ru_maxrss starts from its parent's RSS at fork time: measure through a
# small parent, not this process (which holds a large heap after the fill)
_MEASURE = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_kib(args: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True,
                         check=True).stdout
    code, kib = map(int, out.split())
    assert code == 0, args
    return kib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="200,000 records instead of 1,000,000")
    n = 200_000 if ap.parse_args().quick else 1_000_000
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/usage.db"
        t = time.perf_counter()
        fill(url, n)
        print(f"filled {n:,} records in {time.perf_counter() - t:.1f}s", flush=True)
        print("| figure | measured | baseline | ratio |\n|---|---|---|---|")
        store = create_storage(url)

        t = time.perf_counter()
        read = sum(1 for _ in store.iter_records())
        base_s = time.perf_counter() - t
        assert read == n
        base_rate = n / base_s
        for fmt in ("jsonl", "csv"):
            t = time.perf_counter()
            export_records(store, f"{d}/out.{fmt}", fmt)
            s = time.perf_counter() - t
            row(f"export {n:,} records, {fmt}", f"{n / s:,.0f} rec/s ({s:.1f}s)",
                f"iter_records only: {base_rate:,.0f} rec/s", f"{base_s / s:.2f}x")

        def page(offset: int) -> float:
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                store.query(limit=5000, offset=offset)
                best = min(best, time.perf_counter() - t)
            return best

        first, last = page(0), page(n - 5000)
        row("query page of 5,000 at the last offset", f"{last * 1000:.1f} ms",
            f"first page: {first * 1000:.1f} ms", f"{last / first:.2f}x")

        t = time.perf_counter()
        store.aggregate(("day", "model"))
        store.aggregate(("day",))
        agg_s = time.perf_counter() - t
        store.close()

        t = time.perf_counter()
        subprocess.run([str(BIN / "usageledger"), "report", "--storage", url], check=True,
                       stdout=subprocess.DEVNULL)
        rep_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([str(BIN / "usageledger"), "--help"], check=True, stdout=subprocess.DEVNULL)
        start_s = time.perf_counter() - t
        row("`usageledger report` (day,model + chart), whole process", f"{rep_s * 1000:.0f} ms",
            f"startup (`--help`): {start_s * 1000:.0f} ms; the two aggregates in-process: "
            f"{agg_s * 1000:.0f} ms", f"{rep_s / start_s:.2f}x startup")

        rss = peak_rss_kib([str(BIN / "usageledger"), "export", "--storage", url, "--format",
                            "jsonl", "--out", f"{d}/sub.jsonl"])
        idle = peak_rss_kib([str(BIN / "usageledger"), "--help"])
        size = os.path.getsize(f"{d}/sub.jsonl")
        row(f"peak RSS of `usageledger export` ({n:,} records, {size / 2**20:,.0f} MiB written)",
            f"{rss / 1024:.1f} MiB", f"`usageledger --help`: {idle / 1024:.1f} MiB", f"{rss / idle:.2f}x")


if __name__ == "__main__":
    main()
