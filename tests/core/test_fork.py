"""fork() while our threads work, and multiprocessing children: no child hangs inside
SQLite, and every acknowledged record is delivered once (real processes, real HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.test_crash import drain
from tests.support.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def run(scenario: str, tmp_path: Path, url: str, *extra: str) -> tuple[dict, list[str]]:
    out = tmp_path / "acked"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.core.forker", scenario, str(tmp_path / "q.db"), url, str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, out.read_text().split()


def delivered_once(server: FaultServer, acked: list[str], journal: Path) -> None:
    drain(journal, server.url)
    stored = server.stored_ids()
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records never arrived"
    received = server.received_ids()
    assert len(received) == len(set(received)), "a record was delivered twice"


@pytest.mark.parametrize("mode", ["buffered", "committed"])
def test_fork_storm_no_child_hangs_and_nothing_is_lost(tmp_path, server, mode):
    result, acked = run("storm", tmp_path, server.url, "--mode", mode, "--children", "20",
                        "--per-child", "50", "--child-deadline", "20")
    children = result["children"]
    assert len(children) == 20
    hung = [c for c in children if c["status"] != 0]
    assert not hung, f"children that hung or failed: {hung}"
    assert len([a for a in acked]) >= 20 * 50
    delivered_once(server, acked, tmp_path / "q.db")


@pytest.mark.parametrize("scenario", ["process", "pool", "pool-terminate"])
def test_multiprocessing_children_buffered_lose_nothing(tmp_path, server, scenario):
    result, acked = run(scenario, tmp_path, server.url)
    if scenario == "process":
        assert result["exitcodes"] == [0, 0, 0, 0]
    assert len(acked) == (400 if scenario == "process" else 600)
    delivered_once(server, acked, tmp_path / "q.db")
