"""UsageTracker benchmark (issue 5). Run by hand:
`.venv/bin/python bench/bench_tracker.py [--quick] [--dir DIR]`.

For a summary holding 10 and 10,000 days, in the same run:
- baseline: the pattern the original UsageTracker used, a synchronous read-modify-write of the whole
  JSON file per call (``json.loads(path.read_text())``, update, ``path.write_text(
  json.dumps(data, indent=2))``, no fsync);
- ``UsageTracker.record()`` per call (defaults: flush_interval=5 s, flush_size=10), each
  call timed alone (median, p99, mean), while the background thread writes the file;
- the background: how long until every record is in the file (``flush``), as records/s;
- ``synchronous=True``: ``record()`` writing the file (atomic, fsync) in the caller.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usageledger import UsageTracker  # noqa: E402
from usageledger.summary_file import Entry, SummaryDoc, encode_doc, new_doc  # noqa: E402

ROWS: list[str] = []


def row(label: str, value: str, baseline: str = "", ratio: str = "") -> None:
    line = f"| {label} | {value} | {baseline} | {ratio} |"
    ROWS.append(line)
    print(line, flush=True)


def days_back(n: int) -> list[str]:
    today = datetime.now(UTC).date()
    return [(today - timedelta(days=i)).isoformat() for i in range(n)]


def seed_tracker_file(path: Path, n_days: int) -> None:
    doc: SummaryDoc = new_doc("bench")
    e = Entry(12, 1200, 480, Decimal("0.0123"))
    doc.days = {d: {"openai": {"gpt-4o": e, "gpt-4o-mini": e}} for d in days_back(n_days)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_doc(doc))


def seed_baseline_file(path: Path, n_days: int) -> None:
    entry = {"calls": 12, "input_tokens": 1200, "output_tokens": 480, "cost": 0.0123}
    data = {"daily": {d: {"models": {"gpt-4o": dict(entry), "gpt-4o-mini": dict(entry)},
                          "total_cost": 0.0246} for d in days_back(n_days)}}
    path.write_text(json.dumps(data, indent=2))


def baseline_record(path: Path, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
    """What the original UsageTracker.record() did on every call."""
    data = json.loads(path.read_text())
    day = date.today().isoformat()
    d = data["daily"].setdefault(day, {"models": {}, "total_cost": 0.0})
    m = d["models"].setdefault(model, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost": 0.0})
    m["calls"] += 1
    m["input_tokens"] += input_tokens
    m["output_tokens"] += output_tokens
    m["cost"] += cost
    d["total_cost"] += cost
    path.write_text(json.dumps(data, indent=2))


def timed(fn, n: int) -> list[int]:
    pc = time.perf_counter_ns
    out = []
    for i in range(n):
        t0 = pc()
        fn(i)
        out.append(pc() - t0)
    return out


def fmt_ns(ns: float) -> str:
    return f"{ns / 1000:,.1f} µs" if ns < 1_000_000 else f"{ns / 1e6:,.2f} ms"


def p99(xs: list[int]) -> float:
    return statistics.quantiles(xs, n=100)[98] if len(xs) >= 100 else max(xs)


def run(base: Path, n_days: int, n_base: int, n_rec: int, n_sync: int) -> None:
    work = base / f"days{n_days}"
    work.mkdir(parents=True)
    bpath = work / "baseline.json"
    seed_baseline_file(bpath, n_days)
    size_kb = bpath.stat().st_size / 1024
    b = timed(lambda i: baseline_record(bpath, "gpt-4o", 100 + i, 40, 0.001), n_base)
    b_med = statistics.median(b)

    tpath = work / "usage.json"
    seed_tracker_file(tpath, n_days)
    t = UsageTracker(tpath, backup_dir=work / "b", emergency_dir=work / "e")
    cost = Decimal("0.001")
    r = timed(lambda i: t.record("gpt-4o", 100 + i, 40, provider="openai", cost=cost), n_rec)
    t0 = time.perf_counter()
    assert t.flush(600), "flush did not finish"
    drain = time.perf_counter() - t0
    s = t.get_today()
    writes = t.stats()["writes"]
    t.shutdown(60)
    assert s["unflushed"] == 0 and s["calls"] >= n_rec

    spath = work / "sync" / "usage.json"
    seed_tracker_file(spath, n_days)
    ts = UsageTracker(spath, synchronous=True, backup_dir=work / "sb", emergency_dir=work / "se")
    sy = timed(lambda i: ts.record("gpt-4o", 100 + i, 40, provider="openai", cost=cost), n_sync)
    ts.shutdown(60)

    label = f"{n_days:,} days ({size_kb:,.0f} KiB file)"
    row(f"{label}: original pattern, read-modify-write per call (median)", fmt_ns(b_med), "baseline", "1×")
    r_med, r_mean = statistics.median(r), statistics.fmean(r)
    row(f"{label}: `record()` median / p99 / mean", f"{fmt_ns(r_med)} / {fmt_ns(p99(r))} / {fmt_ns(r_mean)}",
        fmt_ns(b_med), f"{b_med / r_med:,.0f}× faster (median), {b_med / r_mean:,.0f}× (mean)")
    row(f"{label}: background, {n_rec:,} records into the file ({writes} writes, flush_size=10)",
        f"{n_rec / (drain + sum(r) / 1e9):,.0f} records/s", f"{1e9 / b_med:,.0f} records/s",
        f"{(n_rec / (drain + sum(r) / 1e9)) / (1e9 / b_med):,.1f}×")
    sy_med = statistics.median(sy)
    row(f"{label}: `record()` with synchronous=True (atomic write + fsync, median)", fmt_ns(sy_med),
        fmt_ns(b_med), f"{b_med / sy_med:,.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer calls (about 15 s in all)")
    ap.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-tracker-", dir=args.dir))
    try:
        print("| figure | measured | baseline (same run) | ratio |")
        print("|---|---|---|---|")
        q = args.quick
        run(base, 10, n_base=200 if q else 1000, n_rec=2000 if q else 20_000, n_sync=100 if q else 500)
        run(base, 10_000, n_base=10 if q else 40, n_rec=500 if q else 2000, n_sync=10 if q else 40)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
