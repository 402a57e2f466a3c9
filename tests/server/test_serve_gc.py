"""A collector process tunes its garbage collector before it serves (server.app.tune_gc);
an app built inside another program leaves that program's collector alone."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
import uvicorn
from usageledger.server import app as A

def report(*args, **kw):  # instead of serving: what the process looks like at that moment
    print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}))

uvicorn.run = report
before = gc.get_threshold()
A.create_app("memory://")
assert gc.get_threshold() == before and gc.get_freeze_count() == 0, "create_app tuned the gc"
A.serve("memory://", port=1)
"""


def test_serve_freezes_what_start_up_made_and_collects_young_objects_less_often():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    state = json.loads(out.stdout.strip().splitlines()[-1])
    from usageledger.server.app import GC_YOUNG_THRESHOLD

    assert state["threshold"][0] == GC_YOUNG_THRESHOLD > 700
    # modules, the app and its routes: tens of thousands of objects out of every collection
    assert state["frozen"] > 10_000
