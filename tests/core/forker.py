"""Fork and multiprocessing scenarios for tests/core/test_fork.py. Each appends every
acknowledged id to OUT (one write per ack) and prints one JSON line of results.

python -m tests.core.forker storm JOURNAL URL OUT --mode buffered|committed
python -m tests.core.forker process|pool|pool-terminate JOURNAL URL OUT
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time

from usageledger.delivery import PersistentDelivery

d: PersistentDelivery | None = None
fd = -1


def enqueue(n: int, tag: str) -> None:
    assert d is not None
    for i in range(n):
        id_ = d.enqueue({"api_id": "openai", "service_key": "gpt-4o", "payload": {"n": i, "tag": tag}})
        os.write(fd, f"{id_}\n".encode())


def storm(children: int, per_child: int, child_deadline: float) -> dict:
    stop = threading.Event()

    def steady() -> None:  # the parent thread that keeps the writer and SQLite busy
        while not stop.is_set():
            enqueue(20, "parent")
            time.sleep(0.001)

    t = threading.Thread(target=steady)
    t.start()
    results = []
    for k in range(children):
        time.sleep(0.02)
        pid = os.fork()
        if pid == 0:
            enqueue(per_child, f"child{k}")
            sys.exit(0)  # a normal exit: the exit hook writes and delivers
        started = time.monotonic()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.monotonic() - started
            if done:
                results.append({"pid": pid, "status": status, "s": round(elapsed, 3)})
                break
            if elapsed > child_deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                results.append({"pid": pid, "status": "hung", "s": round(elapsed, 3)})
                break
            time.sleep(0.005)
    stop.set()
    t.join()
    return {"children": results}


def mp_work(k: int) -> int:
    enqueue(100, f"mp{k}")
    return k


def main() -> None:
    global d, fd
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["storm", "process", "pool", "pool-terminate"])
    ap.add_argument("journal")
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--mode", default="buffered")
    ap.add_argument("--children", type=int, default=20)
    ap.add_argument("--per-child", type=int, default=50)
    ap.add_argument("--child-deadline", type=float, default=20.0)
    args = ap.parse_args()
    d = PersistentDelivery(db_path=args.journal, api_base=args.url, durability=args.mode,
                           batch_interval=0.02, immediate_pause_seconds=0.05, max_backoff=0.5)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out: dict = {}
    ctx = multiprocessing.get_context("fork")
    if args.scenario == "storm":
        out = storm(args.children, args.per_child, args.child_deadline)
    elif args.scenario == "process":
        procs = [ctx.Process(target=mp_work, args=(k,)) for k in range(4)]
        for p in procs:
            p.start()
        out = {"exitcodes": [p.join(60) or p.exitcode for p in procs]}
    elif args.scenario == "pool":
        pool = ctx.Pool(3)
        out = {"results": pool.map(mp_work, range(6))}
        pool.close()
        pool.join()
    else:  # the `with` form: Pool.__exit__ terminates the workers (SIGTERM)
        with ctx.Pool(3) as pool:
            out = {"results": pool.map(mp_work, range(6))}
            time.sleep(0.2)
    print(json.dumps(out), flush=True)
    d.stop(30)


if __name__ == "__main__":
    main()
