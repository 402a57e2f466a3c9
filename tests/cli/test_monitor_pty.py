"""`usageledger monitor` in a real pseudo-terminal while another process writes the
journal: the counts on screen change, and Ctrl-C exits cleanly."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

from tests.cli.conftest import VENV_BIN

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")

# a producer whose collector is down: items pile up as ready, the dispatcher holds the
# lease and puts each failed batch back with a backoff
_WRITER = """
import sys, time
from usageledger.delivery import PersistentDelivery
d = PersistentDelivery(db_path=sys.argv[1], api_base=sys.argv[2], durability="committed",
                       batch_interval=0.05, immediate_pause_seconds=5, max_backoff=30, timeout=1)
print("started", flush=True)
n = 0
while True:
    for _ in range(20):
        d.enqueue({"api_id": "openai", "service_key": "gpt-4o", "payload": {"n": n}})
        n += 1
    time.sleep(0.15)
"""


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_until(fd: int, pid: int, buf: list[str], done, deadline: float) -> bool:
    # poll, not select: a long test run can hand this process descriptors above 1023,
    # which select() refuses ("filedescriptor out of range")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while time.monotonic() < deadline:
        if poller.poll(200):
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's other side closed
                return done()
            if not chunk:
                return done()
            buf.append(chunk.decode("utf-8", "replace"))
            if done():
                return True
    return False


def test_monitor_live_in_a_pty(tmp_path):
    db = tmp_path / "queue.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), f"http://127.0.0.1:{_dead_port()}"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "started"
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        pid, fd = pty.fork()
        if pid == 0:  # child: a 140x50 terminal, then the real console script
            fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
            os.execve(str(VENV_BIN / "usageledger"),
                      ["usageledger", "monitor", str(db), "--interval", "0.3"], env)
        buf: list[str] = []

        def screen() -> str:
            return _ANSI.sub("", "".join(buf))

        def counts_moved() -> bool:
            text = screen()
            ready = {int(v.replace(",", "")) for v in re.findall(r"ready\s+([\d,]+)", text)}
            backlog = [int(v.replace(",", "")) for v in re.findall(r"retry backlog: ([\d,]+)", text)]
            return len(ready) >= 3 and any(backlog) and "expires in" in text

        assert _read_until(fd, pid, buf, counts_moved, time.monotonic() + 40), screen()[-3000:]
        text = screen()
        ready = [int(v.replace(",", "")) for v in re.findall(r"ready\s+([\d,]+)", text)]
        assert max(ready) > min(ready)
        assert "enqueue rate" in text and re.search(r"enqueue rate\s+[\d,]+\.\d/s", text)
        assert "usageledger monitor" in text

        os.write(fd, b"\x03")  # Ctrl-C through the terminal: SIGINT to the monitor
        _read_until(fd, pid, buf, lambda: False, time.monotonic() + 5)
        for _ in range(100):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("monitor did not exit on Ctrl-C")
        os.close(fd)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert "Traceback" not in screen() and "KeyboardInterrupt" not in screen()
    finally:
        writer.kill()
        writer.wait(10)


def test_monitor_into_a_file_logs_frames_and_stops_on_sigterm(tmp_path, journal_db):
    from usageledger.journal import SqliteJournal

    log = tmp_path / "monitor.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "usageledger"), "monitor", str(journal_db), "--interval", "0.2"],
            stdout=out, stderr=subprocess.PIPE, text=True,
        )
    journal = SqliteJournal(journal_db)
    try:
        deadline = time.monotonic() + 30
        n = 0
        while time.monotonic() < deadline and log.read_text().count("usageledger monitor") < 4:
            journal.append([(f"more-{n}", "raw", b"{}")])
            n += 1
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        journal.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert err == ""
    frames = log.read_text().split("usageledger monitor")[1:]
    assert len(frames) >= 4
    ready = [int(re.search(r"ready\s+([\d,]+)", f).group(1).replace(",", "")) for f in frames]
    assert ready[0] >= 6 and ready[-1] > ready[0]  # each frame printed after the last


def _journal_with_failures(path) -> list[str]:
    from usageledger.journal.sqlite import SqliteJournal
    from usageledger.records import new_id

    j = SqliteJournal(path)
    ids = [new_id() for _ in range(12)]
    j.append([(i, "usage", b'{"provider":"openai","model":"gpt-4o"}') for i in ids])
    items = j.claim(12, "test")
    j.dead([i.id for i in items[:6]], "HTTP 400: model 'gpt-4o-2024-08-06-a-very-long-deployment-"
                                      "name' is not allowed for this key; ask your administrator")
    j.retry([i.id for i in items[6:]], "ConnectError: [Errno 111] Connection refused while "
                                        "connecting to http://collector.internal:8765", time.time() + 60)
    j.close()
    return ids


def test_monitor_fits_an_80x24_terminal(tmp_path):
    import io

    from rich.console import Console

    from usageledger.delivery import PersistentQueueManager
    from usageledger.monitor import run_monitor

    db = tmp_path / "queue.db"
    _journal_with_failures(db)
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)
    mgr = PersistentQueueManager(db)
    try:
        run_monitor(mgr, once=True, console=console)
    finally:
        mgr.close()
    lines = _ANSI.sub("", out.getvalue()).splitlines()
    assert all(len(ln) <= 80 for ln in lines), max(lines, key=len)
    assert len(lines) <= 24, "\n".join(lines)
    rows = [ln for ln in lines if "HTTP 400" in ln or "ConnectError" in ln]
    assert len(rows) >= 6 and all(ln.count("│") == 3 for ln in rows)  # one line per item
    assert all(re.search(r"\d\d:\d\d:\d\d", ln) for ln in rows)  # times never cut


def test_failed_at_80_columns_shows_whole_ids_and_errors(cli, tmp_path, monkeypatch):
    db = tmp_path / "queue.db"
    ids = _journal_with_failures(db)
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("failed", str(db))
    assert r.code == 0, r.err
    assert all(len(line) <= 80 for line in r.out.splitlines())
    for i in ids[:6]:
        assert i in r.out  # whole, copyable for `usageledger requeue`
    flat = " ".join(r.out.split())
    assert "ask your administrator" in flat and '"model": "gpt-4o"' in flat
