"""A producer process for crash tests: enqueues until told to stop or killed, appending
each id to OUT once ``enqueue`` has returned (i.e. once it is acknowledged).

python -m tests.core.producer JOURNAL URL OUT --mode committed|buffered --count N --end stop|exit|wait
    [--journal-url redis://host:port/0?stream=NAME]  (JOURNAL is then the local fallback)
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time

from usageledger.delivery import PersistentDelivery


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("journal")
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--mode", default="committed")
    ap.add_argument("--count", type=int, default=10**9)
    ap.add_argument("--end", default="wait", choices=["stop", "exit", "wait"])
    ap.add_argument("--lease", type=float, default=15.0)
    ap.add_argument("--dispatch-timeout", type=float, default=10.0)
    ap.add_argument("--max-attempts", type=int, default=None)
    ap.add_argument("--journal-url", default=None)
    ap.add_argument("--linger", type=float, default=0.0, help="seconds to wait before the end")
    args = ap.parse_args()
    d = PersistentDelivery(db_path=args.journal, api_base=args.url, durability=args.mode,
                           batch_interval=0.05, lease_s=args.lease, timeout=args.dispatch_timeout,
                           immediate_pause_seconds=0.05, max_backoff=0.5,
                           max_attempts=args.max_attempts, journal_url=args.journal_url)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    print("ready", flush=True)
    for i in range(args.count):
        id_ = d.enqueue({"api_id": "openai", "service_key": "gpt-4o", "payload": {"n": i, "pid": os.getpid()}})
        # one write per ack: the page cache keeps it across SIGKILL
        os.write(fd, f"{id_} {time.time():.6f}\n".encode())
    os.close(fd)
    print("done", flush=True)
    time.sleep(args.linger)
    if args.end == "stop":
        d.stop(30)
    elif args.end == "wait":
        # until the test closes our stdin or kills us, in short slices: CPython runs a
        # signal's handler between bytecodes, so a SIGTERM landing just before one long
        # blocking read() would wait for that read to end (1 run in 10 hung here)
        while not select.select([sys.stdin], [], [], 0.2)[0] or sys.stdin.read(1):
            pass
    # "exit": a normal interpreter exit; the atexit hook must flush


if __name__ == "__main__":
    main()
