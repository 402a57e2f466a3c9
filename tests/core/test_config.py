"""DeliveryConfig: arguments > INI [tracker] > USAGELEDGER_* environment > defaults, for
every key; bad values name key, value and source. Redaction of logged bodies."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from tests.support.fault_server import FaultServer
from usageledger.config import ConfigError, DeliveryConfig, IniManager
from usageledger.delivery import PersistentDelivery
from usageledger.redact import REDACTED, redact, redact_headers

# key -> (argument value, INI text, environment text, expected parsed value for each)
LAYERS = {
    "api_key": (("k-arg", "k-ini", "k-env"), ("k-arg", "k-ini", "k-env")),
    "api_base": (("http://arg:1", "http://ini:2", "https://env:3"), ("http://arg:1", "http://ini:2", "https://env:3")),
    "api_url": (("/arg", "/ini", "/env"), ("/arg", "/ini", "/env")),
    "db_path": (("/tmp/a.db", "/tmp/i.db", "/tmp/e.db"), ("/tmp/a.db", "/tmp/i.db", "/tmp/e.db")),
    "log_file": (("/tmp/a.log", "/tmp/i.log", "/tmp/e.log"), ("/tmp/a.log", "/tmp/i.log", "/tmp/e.log")),
    "log_level": (("debug", "WARNING", "error"), ("DEBUG", "WARNING", "ERROR")),
    "log_bodies": ((True, "off", "yes"), (True, False, True)),
    "timeout": ((1.5, "2.5", "3.5"), (1.5, 2.5, 3.5)),
    "poll_interval": ((0.1, "0.2", "0.3"), (0.1, 0.2, 0.3)),
    "batch_interval": ((0.01, "0.02", "0.03"), (0.01, 0.02, 0.03)),
    "immediate_pause_seconds": ((4, "5", "6"), (4.0, 5.0, 6.0)),
    "max_attempts": ((7, "8", "9"), (7, 8, 9)),
    "max_retries": ((0, "1", "2"), (0, 1, 2)),
    "max_batch_size": ((10, "20", "30"), (10, 20, 30)),
    "durability": (("committed", "fsync", "memory"), ("committed", "fsync", "memory")),
    "flush_interval": ((0.2, "0.3", "0.4"), (0.2, 0.3, 0.4)),
    "max_buffer": ((1000, "2000", "3000"), (1000, 2000, 3000)),
    "max_backoff": ((10, "20", "30"), (10.0, 20.0, 30.0)),
    "max_retry_age": ((60, "2h", "3d"), (60.0, 7200.0, 259200.0)),
}


def test_every_seed_key_is_covered():
    seed_keys = {"api_key", "api_base", "api_url", "db_path", "log_file", "log_level", "log_bodies",
                 "timeout", "poll_interval", "batch_interval", "immediate_pause_seconds",
                 "max_attempts", "max_retries", "max_batch_size"}
    new_keys = {"durability", "flush_interval", "max_buffer", "max_backoff", "max_retry_age"}
    fields = {f.name for f in dataclasses.fields(DeliveryConfig)}
    assert seed_keys | new_keys <= fields
    assert set(LAYERS) == seed_keys | new_keys


def ini_with(tmp_path, **values) -> IniManager:
    path = tmp_path / "usageledger.ini"
    ini = IniManager(path)
    for k, v in values.items():
        ini.set_option("tracker", k, v)
    return IniManager(path)


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_precedence_for_every_key(tmp_path, key):
    (arg, ini_text, env_text), (want_arg, want_ini, want_env) = LAYERS[key]
    env = {f"USAGELEDGER_{key.upper()}": env_text}
    ini = ini_with(tmp_path, **{key: ini_text})
    empty_ini = IniManager(tmp_path / "none.ini")

    c = DeliveryConfig.resolve(ini_manager=ini, env=env, **{key: arg})
    assert getattr(c, key) == want_arg and c.sources[key] == "argument"

    c = DeliveryConfig.resolve(ini_manager=ini, env=env)
    assert getattr(c, key) == want_ini and str(ini.path) in c.sources[key]

    c = DeliveryConfig.resolve(ini_manager=empty_ini, env=env)
    assert getattr(c, key) == want_env and c.sources[key] == f"environment USAGELEDGER_{key.upper()}"

    c = DeliveryConfig.resolve(ini_manager=empty_ini, env={})
    assert getattr(c, key) == getattr(DeliveryConfig(), key) and c.sources[key] == "default"


def test_max_retries_means_attempts_after_the_first():
    c = DeliveryConfig.resolve(ini_manager=IniManager("/nonexistent.ini"), env={"USAGELEDGER_MAX_RETRIES": "3"})
    assert c.max_attempts == 4
    c = DeliveryConfig.resolve(ini_manager=IniManager("/nonexistent.ini"), env={}, max_retries=3, max_attempts=2)
    assert c.max_attempts == 2  # an explicit max_attempts wins


def test_max_attempts_is_unset_by_default_and_max_retry_age_is_three_days():
    c = DeliveryConfig.resolve(ini_manager=IniManager("/nonexistent.ini"), env={})
    assert c.max_attempts is None and c.max_retry_age == 3 * 86400
    for bad in ("0s", "-1d", "d", ""):
        with pytest.raises(ConfigError, match="max_retry_age"):
            DeliveryConfig(max_retry_age=bad)


BAD = {
    "api_base": "ftp://x", "log_level": "LOUD", "log_bodies": "maybe", "timeout": "-1",
    "poll_interval": "0", "batch_interval": "soon", "immediate_pause_seconds": "inf",
    "max_attempts": "0", "max_retries": "-1", "max_batch_size": "1.5", "durability": "eventually",
    "flush_interval": "nan", "max_buffer": "lots", "max_backoff": "0", "max_retry_age": "3 weeks",
}


@pytest.mark.parametrize("key", sorted(BAD))
@pytest.mark.parametrize("layer", ["argument", "ini", "env"])
def test_bad_value_names_key_value_and_source(tmp_path, key, layer):
    value = BAD[key]
    env, ini, args = {}, IniManager(tmp_path / "none.ini"), {}
    if layer == "argument":
        args[key] = value
        where = "argument"
    elif layer == "ini":
        ini = ini_with(tmp_path, **{key: value})
        where = str(ini.path)
    else:
        env[f"USAGELEDGER_{key.upper()}"] = value
        where = f"USAGELEDGER_{key.upper()}"
    with pytest.raises(ConfigError) as err:
        DeliveryConfig.resolve(ini_manager=ini, env=env, **args)
    msg = str(err.value)
    assert key in msg and repr(value) in msg and where in msg, msg


def test_unknown_keyword_is_refused():
    with pytest.raises(TypeError, match="batch_intervall"):
        DeliveryConfig.resolve(ini_manager=IniManager("/nonexistent.ini"), env={}, batch_intervall=1)


def test_unparseable_ini_names_the_file(tmp_path):
    path = tmp_path / "broken.ini"
    path.write_text("this is [not an ini\n= at all")
    with pytest.raises(ConfigError, match="broken.ini"):
        IniManager(path)


def test_persistent_delivery_reads_ini_path_from_environment(tmp_path, monkeypatch):
    ini = ini_with(tmp_path, batch_interval="0.125", durability="committed")
    monkeypatch.setenv("USAGELEDGER_INI_PATH", str(ini.path))
    monkeypatch.setenv("USAGELEDGER_BATCH_INTERVAL", "9")
    d = PersistentDelivery(db_path=tmp_path / "q.db", api_base="http://127.0.0.1:9", max_batch_size=7)
    try:
        assert d.config.batch_interval == 0.125 and d.config.durability == "committed"
        assert d.config.max_batch_size == 7 and d._pipeline.durability == "committed"
    finally:
        d.stop(1)


# -- redaction -------------------------------------------------------------------------------
def test_redaction_at_any_depth_keeps_token_counts():
    body = {
        "api_key": "sk-live-123456789",
        "tracked": [{"payload": {"input_tokens": 12, "output_tokens": 3, "max_tokens": 9,
                                 "auth": {"password": "hunter2", "access_token": "abc",
                                          "nested": [{"client_secret": "s3", "x-api-key": "k"}]}}}],
        "note": "Bearer abc.def.ghi and key sk-proj-ABCDEFGHIJKL inline",
        "json_text": '{"refresh_token": "r", "n": 1}',
    }
    out = redact(body)
    assert out["api_key"] == REDACTED
    p = out["tracked"][0]["payload"]
    assert (p["input_tokens"], p["output_tokens"], p["max_tokens"]) == (12, 3, 9)
    assert p["auth"]["password"] == REDACTED and p["auth"]["access_token"] == REDACTED
    assert p["auth"]["nested"][0] == {"client_secret": REDACTED, "x-api-key": REDACTED}
    assert "abc.def.ghi" not in out["note"] and "sk-proj-ABCDEFGHIJKL" not in out["note"]
    assert '"refresh_token":"[REDACTED]"' in out["json_text"] and '"n":1' in out["json_text"]
    assert redact(b'{"token": "t", "a": [{"secret": 1}]}') == '{"token":"[REDACTED]","a":[{"secret":"[REDACTED]"}]}'
    headers = redact_headers({"Authorization": "Bearer xyz", "X-Api-Key": "k", "Accept": "*/*"})
    assert headers == {"Authorization": REDACTED, "X-Api-Key": REDACTED, "Accept": "*/*"}


def test_log_bodies_logs_redacted_request_and_response(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="usageledger.bodies")
    with FaultServer() as server:
        d = PersistentDelivery(db_path=tmp_path / "q.db", api_base=server.url, api_key="sk-secret-key-999",
                               log_bodies=True, batch_interval=0.02)
        d.enqueue({"api_id": "openai", "service_key": "gpt-4o",
                   "payload": {"input_tokens": 5, "credentials": {"password": "pw-777"}}})
        assert d.flush(10)
        d.stop(2)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "usageledger.bodies")
    assert "request" in text and "response" in text and "input_tokens" in text
    assert "sk-secret-key-999" not in text and "pw-777" not in text and REDACTED in text


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


def test_log_file_gets_records_and_is_private(tmp_path, restore_logger):
    log_file = tmp_path / "logs" / "delivery.log"
    d = PersistentDelivery(db_path=tmp_path / "q.db", api_base="http://127.0.0.1:9", log_file=log_file,
                           log_level="DEBUG", max_attempts=1, batch_interval=0.02, timeout=0.2)
    d.enqueue({"api_id": "a", "service_key": "b"})
    assert d.flush(10)  # nothing listens on port 9 and max_attempts=1: dead-lettered at once
    assert d.stats()["dead"] == 1
    d.stop(1)
    assert log_file.exists() and (log_file.stat().st_mode & 0o777) == 0o600
    text = log_file.read_text()
    assert "dead-lettered 1 records" in text and "network error" in text
