"""`usageledger demo` (what `make demo` runs), non-interactively and with Ctrl-C, as real
processes: a collector subprocess, PersistentDelivery, the cost report."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal

from tests.server.support import ROOT
from tests.support.servers import free_port
from usageledger.demo import run_demo


def _demo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "usageledger", "demo", *args]


def test_demo_runs_non_interactively_and_moves_off_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(_demo_cmd("--no-keep-running", "--records", "400", "--port", str(port)),
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"127.0.0.1:{port} is already in use" in out
    assert "delivered 400 calls" in out and "dead-lettered: 0" in out
    assert "cost per model" in out and "cost per day" in out
    assert "Traceback" not in out


def test_demo_report_matches_what_was_recorded(tmp_path):
    report = run_demo(port=free_port(), n=600, days=3, keep_running=False, workdir=str(tmp_path))
    by_model, by_day = report["model"], report["day"]
    assert sum(r["count"] for r in by_model) == sum(r["count"] for r in by_day) == 600
    assert len(by_model) == 5 and 3 <= len(by_day) <= 4
    total_model = sum(Decimal(r["cost"]) for r in by_model)
    assert total_model == sum(Decimal(r["cost"]) for r in by_day) and total_model > 0
    assert all(r["unknown_cost"] == 0 for r in by_model)  # every simulated model is priced
    assert (tmp_path / "collector.db").exists()


def test_demo_keeps_running_until_ctrl_c_and_exits_cleanly(tmp_path):
    port = free_port()
    proc = subprocess.Popen(_demo_cmd("--records", "200", "--port", str(port)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group, as a terminal's Ctrl-C sees it
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        out = "".join(lines)
        assert "Press Ctrl-C" in out, out
        assert re.search(rf"collector running at http://127.0.0.1:{port}", out)
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/summary").json()["totals"]["count"] == 200
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest
    with socket.socket() as s:  # the collector is gone too
        assert s.connect_ex(("127.0.0.1", port)) != 0


def _read_until(proc: subprocess.Popen, marker: str, timeout: float = 90) -> str:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)


def test_demo_stops_cleanly_on_sigterm_with_its_collector_and_folder(tmp_path):
    import tempfile

    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the demo makes its folder
    proc = subprocess.Popen(_demo_cmd("--records", "200", "--port", str(port)), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _read_until(proc, "Ctrl-C")
        assert "Press Ctrl-C" in out, out
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("usageledger-demo-")]
        proc.send_signal(signal.SIGTERM)  # what a service manager or `kill` sends
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and "stopping the collector" in rest
    with socket.socket() as s:  # no orphaned collector
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("usageledger-demo-")]
    assert tempfile.gettempdir() != str(tmp_path)  # this process's own tempdir is untouched


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "usageledger", "serve", "--storage", f"sqlite:///{tmp_path / 'c.db'}",
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "collector did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out  # a clean stop, not death by the signal (143)
    assert "Application shutdown complete" in out and "Traceback" not in out
