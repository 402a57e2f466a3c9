"""Nothing is stranded in a fallback journal: a new process on the journal drains the
fallback journal an earlier one wrote while the primary's disk was full (a real tmpfs),
and stats() / the journal tools / the exit warning count what waits there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.core.test_disk_faults import big_record, tmpfs
from tests.support.fault_server import FaultServer
from usageledger.delivery import PersistentQueueManager
from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE
from usageledger.sinks.http import HttpSink

ROOT = Path(__file__).resolve().parents[2]

DRAIN = """
import json, sys
from usageledger.delivery import PersistentDelivery
d = PersistentDelivery(db_path=sys.argv[1], api_base=sys.argv[2], fallback_dir=sys.argv[3], batch_interval=0.02)
print(json.dumps({"queued": d.stats()["queued"], "flushed": d.flush(60)}), flush=True)
d.stop(5)
"""


def test_a_new_process_drains_the_fallback_an_earlier_one_left(tmp_path):
    fallback = tmp_path / "fallback"
    with tmpfs(tmp_path / "small", size="256k") as small, FaultServer() as server:
        journal = small / "q.db"
        # the earlier process: it does not deliver (its collector unreachable), and its
        # disk fills up
        first = Pipeline(HttpSink(server.url), journal_path=journal, fallback_dir=fallback,
                         flush_interval=0.01, dispatch=False)
        ids = []
        for i in range(600):
            r = big_record(i)
            first.submit(r.id, KIND_USAGE, r)
            ids.append(r.id)
        assert first.recorder.write_pending(10)
        assert first.stats()["recorder"]["fallback_active"]
        assert first.stats()["queued"] == 600  # stats count the fallback journal
        first.stop(1)
        in_fallback = sum(j.stats()["ready"] for j in first.recorder.journals[1:])
        assert in_fallback > 100
        # the disk has room again
        subprocess.run(["mount", "-o", "remount,size=20m", str(small)], check=True)
        mgr = PersistentQueueManager(journal, fallback_dir=fallback)
        s = mgr.stats()
        mgr.close()
        assert s["fallback_waiting"] == in_fallback and s["ready"] + in_fallback == 600
        proc = subprocess.run([sys.executable, "-c", DRAIN, str(journal), server.url, str(fallback)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert '"queued": 600' in proc.stdout and '"flushed": true' in proc.stdout, proc.stdout
        assert set(ids) == server.stored_ids()
