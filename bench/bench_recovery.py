"""Recovery benchmarks: how soon delivery resumes after a crash and after an outage.
Run by hand: `.venv/bin/python bench/bench_recovery.py --baseline-src DIR` where DIR is
the `src` folder of the version to compare with (e.g. `git archive main src | tar -x -C /tmp/base`);
each figure is measured for this tree and for the baseline in the same run.

1. SIGKILL-to-first-delivery: a process holding the dispatcher lease (default 15 s) with a
   backlog is killed; a new process starts at once; time from the kill to the first record
   stored by the collector, and to the whole backlog stored.
2. outage-end-to-backlog-delivered: a process with default settings enqueues while the
   collector answers 503 for OUTAGE seconds; time from the end of the outage until the
   whole backlog is stored, and requests made during the outage.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fault_server import FaultServer  # noqa: E402

_PRODUCER = """
import sys, time
from usageledger.delivery import PersistentDelivery
journal, url, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
d = PersistentDelivery(db_path=journal, api_base=url, durability="committed")
print("started", flush=True)
for i in range(n):
    d.enqueue({"api_id": "openai", "service_key": "gpt-4o", "payload": {"n": i}})
    if mode == "spread":
        time.sleep(0.002)
print("done", flush=True)
if mode == "flush":
    d.flush(300)
    print("flushed", flush=True)
else:
    sys.stdin.read()
"""


def spawn(src: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": src}
    return subprocess.Popen([sys.executable, "-c", _PRODUCER, *args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def wait(cond, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic()
        time.sleep(0.005)
    return None


def takeover(src: str, tmp: Path, k: int) -> tuple[float, float]:
    n = 300
    with FaultServer() as srv:
        journal = str(tmp / f"takeover-{k}.db")
        srv.default = srv.status(503)
        p = spawn(src, journal, srv.url, str(n), "hold")
        assert p.stdout.readline().strip() == "started"
        assert p.stdout.readline().strip() == "done"
        wait(lambda: srv.requests, 30)
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed = time.monotonic()
        srv.default = srv.ok()
        q = spawn(src, journal, srv.url, "0", "flush")  # a new process, with nothing of its own
        assert q.stdout.readline().strip() == "started"
        started = time.monotonic()
        first = wait(lambda: srv.stored_ids(), 120)
        done = wait(lambda: len(srv.stored_ids()) >= n, 120)
        q.kill()
        q.wait()
        return first - killed, done - killed, first - started


def outage(src: str, tmp: Path, k: int, seconds: float) -> tuple[float, int]:
    n = 2000
    with FaultServer() as srv:
        srv.default = srv.status(503)
        p = spawn(src, str(tmp / f"outage-{k}.db"), srv.url, str(n), "spread")
        assert p.stdout.readline().strip() == "started"
        started = time.monotonic()
        time.sleep(seconds)
        during = len(srv.requests)
        srv.default = srv.ok()
        ended = time.monotonic()
        done = wait(lambda: len(srv.stored_ids()) >= n, 300)
        p.kill()
        p.wait()
        assert started and done is not None, "backlog not delivered"
        return done - ended, during


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-src", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--outage", type=float, default=10.0)
    args = ap.parse_args()
    import tempfile

    ours = str(ROOT / "src")
    print("| figure | this tree | baseline | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res = {}
        for name, src in (("ours", ours), ("base", args.baseline_src)):
            (tmp / name).mkdir()
            res[name] = [takeover(src, tmp / name, k) for k in range(args.runs)]
        labels = ("SIGKILL to first delivery (s)", "SIGKILL to backlog of 300 delivered (s)",
                  "new process constructed to first delivery (s; the rest is interpreter start and imports)")
        for i, label in enumerate(labels):
            a = statistics.median(r[i] for r in res["ours"])
            b = statistics.median(r[i] for r in res["base"])
            print(f"| {label}, median of {args.runs} | {a:.2f} | {b:.2f} | {b / a:.1f}x sooner |", flush=True)
        res = {}
        for name, src in (("ours", ours), ("base", args.baseline_src)):
            res[name] = [outage(src, tmp / name, k, args.outage) for k in range(args.runs)]
        a = statistics.median(r[0] for r in res["ours"])
        b = statistics.median(r[0] for r in res["base"])
        print(f"| end of a {args.outage:g} s outage to backlog of 2,000 delivered (s), median of {args.runs}"
              f" | {a:.2f} | {b:.2f} | {b / a:.1f}x sooner |")
        a = statistics.median(r[1] for r in res["ours"])
        b = statistics.median(r[1] for r in res["base"])
        print(f"| requests during the {args.outage:g} s outage, one process | {a:.0f} | {b:.0f} | {b / max(a, 1):.1f}x fewer |")


if __name__ == "__main__":
    main()
