"""Across processes: state survives SIGKILL of the writer; two worker processes racing on
the same items are granted max_retries attempts per item in total."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .child import BATCH, ITEMS

ROOT = Path(__file__).parents[2]


def _child(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.kv.child", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_state_survives_sigkill(make_durable_store):
    options = json.dumps(make_durable_store.options())
    writer = _child("save", options)
    try:
        line = writer.stdout.readline()
        assert line.strip() == "SAVED", writer.stderr.read() if writer.poll() is not None else line
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
    assert writer.returncode == -signal.SIGKILL

    reader = _child("load", options)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    found = json.loads(out)
    assert found["processed"] == sorted(ITEMS)
    assert found["state"] == {"cursor": "abc123", "page": 17, "done": False}
    assert found["failed"] == ["item-9"]
    assert found["api_calls"] == 25
    fetch = found["fetch"]
    assert (fetch["count"], fetch["total_time"], fetch["min_time"], fetch["max_time"]) == (2, 2.0, 0.25, 1.75)
    # killed in the middle of rewriting the batch: every key holds the same generation
    assert found["batch_size"] in (0, BATCH)
    assert len(found["batch_generations"]) <= 1


def test_two_worker_processes_race_on_retries(make_durable_store):
    options = json.dumps(make_durable_store.options())
    n_items = 200
    workers = [_child("race", options, str(n_items)) for _ in range(2)]
    grants: list[tuple[str, int]] = []
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        grants += [tuple(g) for g in json.loads(out)]
    per_item: dict[str, list[int]] = {}
    for item, attempt in grants:
        per_item.setdefault(item, []).append(attempt)
    assert len(per_item) == n_items
    for item, attempts in per_item.items():
        assert sorted(attempts) == [1, 2, 3], (item, attempts)
