"""At exit with undelivered records: one WARNING saying how many, where, and the command
that shows them (a real process whose collector is down)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SCRIPT = """
import sys
from usageledger.delivery import PersistentDelivery
d = PersistentDelivery(db_path=sys.argv[1], api_base=sys.argv[2], durability=sys.argv[3])
for i in range(25):
    d.enqueue({"api_id": "openai", "service_key": "gpt-4o", "n": i})
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_exit_with_records_waiting_warns_once_naming_count_place_and_command(tmp_path):
    journal = tmp_path / "q.db"
    proc = run(str(journal), f"http://127.0.0.1:{free_port()}", "buffered")  # nobody listens
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "not delivered yet" in line]
    assert len(warnings) == 1, proc.stderr
    line = warnings[0]
    assert "25 records" in line and str(journal) in line
    command = re.search(r"`(usageledger stats [^`]+)`", line).group(1)
    shown = subprocess.run([str(BIN / "usageledger"), *command.split()[1:], "--json"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert '"ready": 25' in shown.stdout


def test_exit_with_everything_delivered_says_nothing(tmp_path):
    from tests.support.fault_server import FaultServer

    with FaultServer() as server:
        proc = run(str(tmp_path / "q.db"), server.url, "buffered")
        assert proc.returncode == 0
        assert len(server.stored_ids()) == 25
    assert "not delivered" not in proc.stderr


def test_memory_durability_says_the_records_are_lost(tmp_path):
    proc = run(str(tmp_path / "q.db"), f"http://127.0.0.1:{free_port()}", "memory")
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if "lost when this process exits" in line]
    assert len(lines) == 1 and "25 records" in lines[0], proc.stderr
