"""Helpers for collector tests: a collector in a REAL uvicorn process (through the CLI,
as users start it) on a chosen or free port, and record builders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port
from usageledger.records import new_id

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Collector:
    storage: str
    port: int = 0
    api_keys: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    #: more `usageledger serve` options, e.g. ["--alert-journal", path]
    extra_args: list[str] = field(default_factory=list)
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Collector:
        if not self.port:
            self.port = free_port()
        cmd = [sys.executable, "-m", "usageledger", "serve", "--storage", self.storage,
               "--host", "127.0.0.1", "--port", str(self.port)]
        for k in self.api_keys:
            cmd += ["--api-key", k]
        cmd += self.extra_args
        if self.workers != 1:
            cmd += ["--workers", str(self.workers)]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("USAGELEDGER_")} | self.env
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log_path.read_text() if self.log_path else ""
                raise RuntimeError(f"collector exited with {self.proc.returncode}: {log[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"collector on {self.url} did not become healthy in {timeout}s")

    def worker_pids(self) -> list[int]:
        """The worker processes of a ``--workers N`` collector (children of the supervisor)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; whatever the storage committed is all that stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def record(i: int = 0, **kw: Any) -> dict[str, Any]:
    """A usage record as clients send it (JSON-ready)."""
    out: dict[str, Any] = {
        "id": new_id(),
        "timestamp": datetime(2025, 3, 1 + i % 28, 12, tzinfo=UTC).isoformat(),
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 100 + i,
        "output_tokens": 10,
        "cost": "0.000001",
        "user_id": f"u{i % 3}",
    }
    out.update(kw)
    return out
