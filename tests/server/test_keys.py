"""`usageledger serve` takes its keys from a file or the environment, so they are not in the
process list that every local user can read (/proc/<pid>/cmdline, ps)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server.support import ROOT, Collector, record
from usageledger.server.keys import read_key_file

KEY = "collector-key-0f6b2d8a9c"
OTHER = "collector-key-second-71e3"


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _check_keys(c: Collector, keys: list[str]) -> None:
    body = {"tracked": [record()]}
    for key in keys:
        resp = httpx.post(c.url + "/api/v1/track", json=body, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
    assert httpx.post(c.url + "/api/v1/track", json=body,
                      headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_serve_with_a_key_file_keeps_the_key_out_of_the_process_list(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# collector keys\n{KEY}\n\n  {OTHER}  \n")
    key_file.chmod(0o600)
    with Collector(f"sqlite:///{tmp_path}/k.db", extra_args=["--api-key-file", str(key_file)]) as c:
        cmdline = _cmdline(c.proc.pid)
        assert "--api-key-file" in cmdline and str(key_file) in cmdline
        assert KEY not in cmdline and OTHER not in cmdline
        _check_keys(c, [KEY, OTHER])


def test_serve_with_keys_from_the_environment(tmp_path):
    env = {"USAGELEDGER_SERVER_API_KEYS": f"{KEY}, {OTHER}"}
    with Collector(f"sqlite:///{tmp_path}/k.db", env=env) as c:
        assert KEY not in _cmdline(c.proc.pid)
        _check_keys(c, [KEY, OTHER])


def test_a_key_file_that_others_can_read_is_warned_about(tmp_path, caplog):
    key_file = tmp_path / "keys"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    assert read_key_file(key_file) == [KEY]
    assert "chmod 600" in caplog.text and str(key_file) in caplog.text and KEY not in caplog.text


@pytest.mark.parametrize("content,needle", [(None, "cannot read"), ("# only a comment\n\n", "holds no key")])
def test_an_unusable_key_file_is_one_line_on_stderr(tmp_path, content, needle):
    key_file = tmp_path / "keys"
    if content is not None:
        key_file.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "usageledger", "serve", "--api-key-file", str(key_file),
                           "--port", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr
