"""TelemetryConfig: environment names, precedence, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from usageledger.telemetry import ConfigError, TelemetryClient, TelemetryConfig


def test_defaults_derive_paths_from_base_dir(tmp_path):
    c = TelemetryConfig.from_env(env={}, base_dir=str(tmp_path))
    assert c.database_path == str(tmp_path / "db" / "telemetry.sqlite")
    assert c.ndjson_dir == str(tmp_path / "raw")
    assert c.journal_dir == str(tmp_path / "journal")
    assert c.api_enabled and not c.sheets_enabled
    moved = c.replace(base_dir=str(tmp_path / "other"))
    assert moved.ndjson_dir == str(tmp_path / "other" / "raw")


def test_prefixed_env_beats_seed_names_and_arguments_beat_env(tmp_path):
    env = {
        "USAGELEDGER_TELEMETRY_BASE_DIR": str(tmp_path / "a"),
        "TELEMETRY_BASE_DIR": str(tmp_path / "b"),
        "TELEMETRY_NDJSON_DIR": str(tmp_path / "nd"),
        "AGENT_OWNER": "team-x",
        "USAGELEDGER_API_BASE": "http://collector:8765",
        "GOOGLE_SHEETS_API_ENABLED": "false",
        "USAGELEDGER_TELEMETRY_BATCH_INTERVAL": "0.25",
    }
    c = TelemetryConfig.from_env(env=env)
    assert c.base_dir == str(tmp_path / "a")
    assert c.sources["base_dir"] == "environment USAGELEDGER_TELEMETRY_BASE_DIR"
    assert c.ndjson_dir == str(tmp_path / "nd") and c.agent_owner == "team-x"
    assert c.api_base == "http://collector:8765" and c.batch_interval == 0.25
    c2 = TelemetryConfig.from_env(env=env, agent_owner="me")
    assert c2.agent_owner == "me" and c2.sources["agent_owner"] == "argument"
    assert TelemetryConfig.from_env(env={"AGENT_METRICS_DIR": "/x"}).base_dir == "/x"


def test_bad_values_name_key_value_and_source():
    with pytest.raises(ConfigError, match=r"batch_interval='-1' \(from environment USAGELEDGER_TELEMETRY_BATCH_INTERVAL\)"):
        TelemetryConfig.from_env(env={"USAGELEDGER_TELEMETRY_BATCH_INTERVAL": "-1"})
    with pytest.raises(ConfigError, match=r"sheets_enabled='maybe' \(from environment GOOGLE_SHEETS_API_ENABLED\) must be a boolean"):
        TelemetryConfig.from_env(env={"GOOGLE_SHEETS_API_ENABLED": "maybe"})
    with pytest.raises(ConfigError, match="durability='fast'"):
        TelemetryConfig(durability="fast")
    with pytest.raises(ConfigError, match="api_base='collector' .* http"):
        TelemetryConfig(api_base="collector")
    with pytest.raises(ConfigError, match="max_attempts=0"):
        TelemetryConfig(max_attempts=0)
    with pytest.raises(TypeError, match="unknown telemetry settings"):
        TelemetryConfig.from_env(env={}, colour="red")


def test_sheets_needs_id_and_credentials():
    c = TelemetryConfig(sheets_enabled=True)
    with pytest.raises(ConfigError, match="sheets_spreadsheet_id") as err:
        c.validate()
    assert "sheets_token" in str(err.value)


@pytest.mark.parametrize("url", ["http://localhost:8080", "https://127.0.0.1", "http://[::1]:9",
                                 "https://0.0.0.0", "http://sheets.localhost"])
def test_local_sheets_url_is_a_configuration_error_at_start(tmp_path, url):
    env = {"GOOGLE_SHEETS_API_ENABLED": "true", "GOOGLE_SHEETS_API_URL": url}
    with pytest.raises(ConfigError, match=r"GOOGLE_SHEETS_API_URL\) points at this machine") as err:
        TelemetryClient(TelemetryConfig.from_env(env=env, base_dir=str(tmp_path), sheets_token="t",
                                                 sheets_spreadsheet_id="s"))
    assert "sheets_enabled=false" in str(err.value)
    assert not (Path(tmp_path) / "journal").exists()  # refused before anything started
    allowed = TelemetryConfig.from_env(env=env, sheets_token="t", sheets_spreadsheet_id="s",
                                       sheets_allow_insecure_local=True)
    allowed.validate()


def test_plain_http_sheets_url_is_refused():
    c = TelemetryConfig(sheets_enabled=True, sheets_token="t", sheets_spreadsheet_id="s",
                        sheets_api_url="http://sheets.example.com")
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        c.validate()


def test_repr_hides_secrets():
    c = TelemetryConfig(api_key="secret-key", sheets_token="secret-token")
    assert "secret" not in repr(c)


def test_client_settings_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("USAGELEDGER_TELEMETRY_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("USAGELEDGER_TELEMETRY_API_ENABLED", "no")
    monkeypatch.setenv("AGENT_OWNER", "owner-from-env")
    client = TelemetryClient(durability="memory")
    try:
        assert client.config.base_dir == str(tmp_path)
        assert set(client.pipelines) == {"ndjson", "sqlite"}
        rid = client.start_run("a", "j")
        assert client.get_active_run(rid).agent_owner == "owner-from-env"
        client.end_run(rid)
    finally:
        client.close(5)
    with pytest.raises(TypeError, match="config must be a TelemetryConfig"):
        TelemetryClient({"base_dir": "x"})  # type: ignore[arg-type]


def test_unusable_files_are_a_configuration_error_naming_them(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="telemetry files .*file/raw"):
        TelemetryClient(base_dir=str(blocker), durability="memory")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="corrupt.sqlite"):
        TelemetryClient(base_dir=str(tmp_path / "ok"), database_path=str(corrupt), durability="memory")
