"""Real PostgreSQL and Redis servers on 127.0.0.1 for tests: installed if missing (CI runs
as root), started on free ports in temp directories, stopped at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on 127.0.0.1:{port} did not start within {timeout}s")


def _apt_install(package: str) -> None:
    if os.geteuid() != 0:
        raise RuntimeError(f"{package} is not installed and tests are not root: apt-get install {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=env
    )


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen
    dir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_redis(port: int | None = None, directory: str | None = None,
                persistence: tuple[str, ...] = ("--appendonly", "no")) -> RedisServer:
    """A redis-server on ``port`` (a free one by default) keeping its files in
    ``directory`` (a new temp dir by default); ``persistence`` replaces the default
    "no AOF" arguments, e.g. ``("--appendonly", "yes", "--appendfsync", "always")``.
    Started again on the same port and directory, it reloads what it persisted."""
    if shutil.which("redis-server") is None:
        _apt_install("redis-server")
    port = port or free_port()
    d = directory or tempfile.mkdtemp(prefix="ul-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes",
         "--daemonize", "no", "--dir", d, "--save", "", *persistence],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_port(port)
    return RedisServer(port, proc, d)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    _apt_install("postgresql")
    return _pg_bin(name)


@dataclass
class PostgresServer:
    port: int
    dir: str
    as_root: bool

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def new_database(self, prefix: str = "ul_test") -> str:
        """The URL of a new empty database on this server (a test's own)."""
        import uuid

        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        try:
            self._run(_pg_bin("pg_ctl"), "-D", f"{self.dir}/data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def start_postgres() -> PostgresServer:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    as_root = os.geteuid() == 0
    d = tempfile.mkdtemp(prefix="ul-pg-")
    os.chmod(d, 0o755)
    server = PostgresServer(free_port(), d, as_root)
    if as_root:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        # every parent must be traversable by the postgres user
        os.chmod(os.path.dirname(d), os.stat(os.path.dirname(d)).st_mode | 0o711)
    server._run(initdb, "-D", f"{d}/data", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale")
    server._run(
        pg_ctl, "-D", f"{d}/data", "-l", f"{d}/log", "-o",
        f"-c listen_addresses=127.0.0.1 -p {server.port} -k {d} -c fsync=off -c max_connections=200",
        "-w", "start",
    )
    _wait_port(server.port)
    return server
