"""Secrets stay secret: the API key and a URL's credentials never show in a config's repr,
in config errors, in body logs or dead-letter errors; local files are private; and each
PersistentDelivery logs only into its own log file."""

from __future__ import annotations

import logging
import os

import pytest

from tests.support.fault_server import FaultServer
from tests.support.servers import free_port
from usageledger.config import ConfigError, DeliveryConfig, IniManager
from usageledger.delivery import PersistentDelivery, PersistentQueueManager
from usageledger.redact import REDACTED, redact_url
from usageledger.telemetry.config import TelemetryConfig
from usageledger.telemetry.models import RunRecord
from usageledger.telemetry.ndjson import NDJSONWriter

KEY = "sk-live-SECRET-0123456789"
CRED = "CREDENTIAL-in-url-42"


@pytest.fixture
def restore_logger():
    logger = logging.getLogger("usageledger")
    level, handlers = logger.level, list(logger.handlers)
    yield
    for h in logger.handlers[:]:
        if h not in handlers:
            logger.removeHandler(h)
            h.close()
    logger.setLevel(level)


def test_repr_and_str_of_configs_hide_the_key_and_url_credentials():
    config = DeliveryConfig(api_key=KEY, api_base=f"http://user:{CRED}@collector.example:8765")
    for text in (repr(config), str(config), f"{config!r}"):
        assert KEY not in text and CRED not in text
        assert REDACTED in text and "collector.example:8765" in text and "max_batch_size=100" in text
    tele = TelemetryConfig(api_key=KEY, api_base=f"https://{CRED}@collector.example")
    assert KEY not in repr(tele) and CRED not in repr(tele)


@pytest.mark.parametrize("key,value", [
    ("api_base", f"ftp://user:{CRED}@host"),
    ("api_key", 12345678901234567),
])
@pytest.mark.parametrize("layer", ["argument", "env"])
def test_config_errors_do_not_show_secrets(tmp_path, key, value, layer):
    args, env = {}, {}
    if layer == "argument":
        args[key] = value
    else:
        env[f"USAGELEDGER_{key.upper()}"] = str(value)
        if key == "api_key":
            return  # every string is a valid key: nothing to refuse
    with pytest.raises(ConfigError) as err:
        DeliveryConfig.resolve(ini_manager=IniManager(tmp_path / "none.ini"), env=env, **args)
    msg = str(err.value)
    assert key in msg and CRED not in msg and str(value) not in msg, msg


def test_redact_url_masks_user_info_anywhere_in_a_text():
    assert redact_url(f"http://user:{CRED}@h:1/api") == f"http://{REDACTED}@h:1/api"
    assert redact_url(f"see https://{CRED}@h and http://h/x@y") == f"see https://{REDACTED}@h and http://h/x@y"
    assert redact_url("http://127.0.0.1:8765/api/v1/track") == "http://127.0.0.1:8765/api/v1/track"


def test_credentials_in_api_base_are_redacted_in_body_logs_and_errors(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="usageledger")
    with FaultServer() as server:
        base = server.url.replace("http://", f"http://user:{CRED}@")
        d = PersistentDelivery(db_path=tmp_path / "q.db", api_base=base, api_key=KEY,
                               log_bodies=True, batch_interval=0.02)
        d.enqueue({"api_id": "openai", "service_key": "gpt-4o"})
        assert d.flush(10)
        assert KEY not in repr(d.config) and CRED not in repr(d.config)
        d.stop(2)
    # nothing listens on this port: the failure is dead-lettered with its error
    dead_base = f"http://user:{CRED}@127.0.0.1:{free_port()}"
    d = PersistentDelivery(db_path=tmp_path / "dead.db", api_base=dead_base, api_key=KEY,
                           log_bodies=True, batch_interval=0.02, max_attempts=1, timeout=0.5)
    d.enqueue({"api_id": "openai", "service_key": "gpt-4o"})
    assert d.flush(10)
    d.stop(2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "request" in text and "/api/v1/track" in text
    assert CRED not in text and KEY not in text
    manager = PersistentQueueManager(tmp_path / "dead.db")
    failed = manager.failed()
    manager.close()
    assert failed and all(CRED not in str(f) and KEY not in str(f) for f in failed)


def test_ndjson_telemetry_files_are_private(tmp_path):
    writer = NDJSONWriter(tmp_path / "runs")
    path = writer.append(RunRecord(run_id="r1", agent_name="a", job_type="j",
                                   start_time="2026-01-02T03:04:05+00:00"))
    assert (path.stat().st_mode & 0o777) == 0o600


def test_each_delivery_logs_only_into_its_own_log_file(tmp_path, restore_logger):
    ports = free_port(), free_port()
    logs = tmp_path / "a.log", tmp_path / "b.log"
    deliveries = [
        PersistentDelivery(db_path=tmp_path / f"{n}.db", api_base=f"http://127.0.0.1:{port}",
                           log_file=log, log_level="DEBUG", log_bodies=True, max_attempts=1,
                           batch_interval=0.02, timeout=0.5)
        for n, port, log in zip("ab", ports, logs, strict=True)
    ]
    try:
        for d in deliveries:
            d.enqueue({"api_id": "a", "service_key": "b"})
        for d in deliveries:
            assert d.flush(10)
    finally:
        for d in deliveries:
            d.stop(2)
    a, b = (log.read_text() for log in logs)
    assert f"127.0.0.1:{ports[0]}" in a and f"127.0.0.1:{ports[1]}" in b  # each logged its own
    assert f"127.0.0.1:{ports[1]}" not in a and f"127.0.0.1:{ports[0]}" not in b
    assert "dead-lettered 1 records" in a and "dead-lettered 1 records" in b
    assert all((log.stat().st_mode & 0o777) == 0o600 for log in logs)
    # once both are stopped, their files are closed and gone from the logger
    names = {getattr(h, "baseFilename", None) for h in logging.getLogger("usageledger").handlers}
    assert not names & {str(log.resolve()) for log in logs}
    assert os.path.exists(logs[0])
