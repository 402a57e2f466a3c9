"""One settings object, one resolver, one home for default paths: every facade (delivery,
telemetry, KV, Meter, UsageTracker, Pipeline) resolves arguments > INI section >
environment > defaults the same way, and the same bad value gives the same error."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests.core.sinks import CollectSink
from usageledger.config import ConfigError, DeliveryConfig, IniManager
from usageledger.delivery import PersistentDelivery
from usageledger.kv import create_store
from usageledger.meter import Meter
from usageledger.pipeline import Pipeline
from usageledger.settings import DEFAULTS, Settings
from usageledger.telemetry import TelemetryClient, TelemetryConfig
from usageledger.tracker import UsageTracker


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Every platformdirs location under tmp_path (XDG variables, read at each call), no
    INI file unless a test writes one, and none of our variables from the outside."""
    for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    import os

    for var in list(os.environ):
        if var.startswith("USAGELEDGER_") or var in ("AGENT_OWNER", "TELEMETRY_BASE_DIR"):
            monkeypatch.delenv(var)
    return tmp_path


def write_ini(path: Path, section: str, **values: str) -> IniManager:
    ini = IniManager(path)
    for k, v in values.items():
        ini.set_option(section, k, v)
    return IniManager(path)


# -- the settings object ---------------------------------------------------------------------
def test_settings_are_frozen_checked_and_replaced_by_copy():
    s = Settings(batch_interval="0.25", max_attempts="3")  # text (INI, environment) is parsed
    assert (s.batch_interval, s.max_attempts) == (0.25, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_interval = 1.0  # type: ignore[misc]
    t = s.replace(max_backoff=5, poll_interval=2)  # poll_interval: accepted, changes nothing
    assert t.max_backoff == 5.0 and s.max_backoff == DEFAULTS.max_backoff
    assert not hasattr(t, "poll_interval")
    with pytest.raises(ConfigError, match=r"poll_interval=0 \(from argument\) must be a positive number"):
        s.replace(poll_interval=0)
    with pytest.raises(TypeError, match="batch_intervall"):
        s.replace(batch_intervall=1)
    with pytest.raises(ConfigError, match=r"max_in_flight=0 \(from INI file x \[tracker\]\)"):
        Settings(max_in_flight=0, sources={"max_in_flight": "INI file x [tracker]"})
    assert Settings(durability="memory", journal_path="/tmp/j.db").journal_path is None


def test_pipeline_runs_on_a_settings_object_with_keyword_overrides(tmp_path):
    base = Settings(journal_path=str(tmp_path / "j.db"), batch_interval=0.2, max_batch_size=7)
    p = Pipeline(CollectSink(), base, max_batch_size=9, poll_interval=3, dispatch=False)
    try:
        assert p.settings.batch_interval == 0.2 and p.settings.max_batch_size == 9
        assert p.dispatcher.max_batch_size == 9 and p.dispatcher.batch_interval == 0.2
        assert p.recorder.flush_interval == DEFAULTS.flush_interval
        assert p.journal.location == str(tmp_path / "j.db")
        assert not hasattr(p.dispatcher, "poll_interval")  # never read, no longer carried
    finally:
        p.stop(1)


# -- one home for default paths ----------------------------------------------------------------
def test_every_default_location_follows_the_user_dirs(home):
    from usageledger.kv.config import default_sqlite_path
    from usageledger.pipeline import default_journal_path
    from usageledger.recorder import fallback_paths
    from usageledger.sinks.summary import default_locations
    from usageledger.tracker import default_storage_path

    data, cache, config = home / "xdg_data_home" / "usageledger", home / "xdg_cache_home" / "usageledger", \
        home / "xdg_config_home" / "usageledger"
    assert DeliveryConfig().db_path == str(data / "queue.db")
    assert TelemetryConfig().base_dir == str(data / "telemetry")
    assert default_sqlite_path() == str(data / "kv.sqlite3")
    assert default_storage_path() == data / "usage_summary.json"
    assert default_journal_path("x.journal") == data / "x.journal"
    assert IniManager.resolve_path(env={}) == config / "usageledger.ini"
    tiers = default_locations(home / "s.json", None, None)
    assert [loc.path.parent for loc in tiers[1:]] == [data / "summary-backup", cache / "emergency"]
    assert fallback_paths(home / "j.db")[0] == cache / "fallback" / "j.db"


# -- each facade honours arguments > INI > environment > defaults ------------------------------
def test_persistent_delivery_precedence(home, monkeypatch):
    ini = write_ini(home / "u.ini", "tracker", batch_interval="0.3", max_backoff="7")
    monkeypatch.setenv("USAGELEDGER_INI_PATH", str(ini.path))
    monkeypatch.setenv("USAGELEDGER_BATCH_INTERVAL", "0.4")
    monkeypatch.setenv("USAGELEDGER_MAX_BACKOFF", "8")
    monkeypatch.setenv("USAGELEDGER_MAX_BUFFER", "500")
    d = PersistentDelivery(db_path=home / "q.db", api_base="http://127.0.0.1:9", max_backoff=6,
                           immediate_pause_seconds=0.125)
    try:
        s = d._pipeline.settings
        assert s.max_backoff == 6.0 and s.sources["max_backoff"] == "argument"
        assert s.batch_interval == 0.3 and str(ini.path) in s.sources["batch_interval"]
        assert s.max_buffer == 500 and s.sources["max_buffer"] == "environment USAGELEDGER_MAX_BUFFER"
        assert s.flush_interval == DEFAULTS.flush_interval and s.sources["flush_interval"] == "default"
        assert s.base_delay == 0.125  # the original client's name for it
        assert d._pipeline.dispatcher.base_delay == 0.125
        assert d._pipeline.recorder.max_buffer == 500
    finally:
        d.stop(1)


def test_telemetry_precedence(home, monkeypatch):
    ini = write_ini(home / "u.ini", "telemetry", batch_interval="0.3", max_backoff="7", agent_owner="ini")
    env = {"USAGELEDGER_INI_PATH": str(ini.path), "USAGELEDGER_TELEMETRY_BATCH_INTERVAL": "0.4",
           "USAGELEDGER_TELEMETRY_MAX_BACKOFF": "8", "USAGELEDGER_TELEMETRY_FLUSH_INTERVAL": "0.02",
           "AGENT_OWNER": "env"}
    c = TelemetryConfig.from_env(env=env, base_dir=str(home / "t"), durability="memory", max_backoff=6)
    assert (c.max_backoff, c.sources["max_backoff"]) == (6.0, "argument")
    assert c.batch_interval == 0.3 and c.sources["batch_interval"] == f"INI file {ini.path} [telemetry]"
    assert c.agent_owner == "ini"
    assert c.flush_interval == 0.02 and c.sources["flush_interval"] == "environment USAGELEDGER_TELEMETRY_FLUSH_INTERVAL"
    assert c.exit_timeout == DEFAULTS.exit_timeout and c.sources["exit_timeout"] == "default"
    # the client runs every destination's pipeline on those settings
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    client = TelemetryClient(base_dir=str(home / "t"), durability="memory", api_enabled=False, max_backoff=6)
    try:
        for pipeline in client.pipelines.values():
            s = pipeline.settings
            assert (s.max_backoff, s.batch_interval, s.flush_interval) == (6.0, 0.3, 0.02)
            assert s.max_attempts == 100  # the telemetry default: collector outages are waited out
    finally:
        client.close(2)


def test_kv_precedence(home):
    ini = write_ini(home / "u.ini", "kv", key_prefix="ini:", store_type="memory")
    env = {"USAGELEDGER_INI_PATH": str(ini.path), "USAGELEDGER_KV_KEY_PREFIX": "env:",
           "USAGELEDGER_KV_DEFAULT_TTL": "60", "USAGELEDGER_KV_TYPE": "sqlite"}
    store = create_store(env=env)
    assert type(store).__name__ == "MemoryKVStore"  # INI beats environment
    assert store.key_prefix == "ini:" and store.default_ttl == 60.0  # environment beats default
    store = create_store(env=env, key_prefix="arg:")
    assert store.key_prefix == "arg:"
    store = create_store(env={"USAGELEDGER_INI_PATH": str(home / "none.ini")}, store_type="memory")
    assert store.key_prefix == "usageledger:" and store.default_ttl is None
    asyncio.run(store.close())


def test_meter_precedence(home, monkeypatch):
    monkeypatch.setenv("USAGELEDGER_JOURNAL_URL", "redis://127.0.0.1:9/0?stream=ours")
    s = Meter._settings({})
    assert s.journal_url.endswith("stream=ours.meter")  # the shared setting, the meter's own stream
    assert s.sources["journal_url"] == "environment USAGELEDGER_JOURNAL_URL"
    s = Meter._settings({"journal_url": "redis://127.0.0.1:9/0?stream=mine"})
    assert s.journal_url.endswith("stream=mine") and s.sources["journal_url"] == "argument"
    monkeypatch.delenv("USAGELEDGER_JOURNAL_URL")
    m = Meter("memory", flush_interval=0.02)
    try:
        s = m._pipeline.settings
        assert s.batch_interval == 0.05 and s.sources["batch_interval"] == "default"  # the meter's
        assert s.flush_interval == 0.02 and s.durability == "memory"
    finally:
        m.close(2)


def test_tracker_flush_interval_is_its_batch_interval(home):
    """UsageTracker's documented ``flush_interval``/``flush_size`` are how often the summary
    file is written: the pipeline's batch_interval/max_batch_size. The journal's group
    commit stays at the mechanism's default."""
    t = UsageTracker(home / "u.json", flush_interval=7, flush_size=33, max_backoff=0.2, durability="memory")
    try:
        s = t._pipeline.settings
        assert (s.batch_interval, s.max_batch_size) == (7.0, 33)
        assert t._pipeline.dispatcher.batch_interval == 7.0
        assert s.flush_interval == DEFAULTS.flush_interval == t._pipeline.recorder.flush_interval
        assert s.base_delay == 0.2 and s.max_backoff == 0.2
    finally:
        t.shutdown(2)
    with pytest.raises(ConfigError, match=r"flush_interval=-1 \(from argument\) must be a positive number"):
        UsageTracker(home / "u.json", flush_interval=-1)
    with pytest.raises(ConfigError, match=r"flush_size=0 \(from argument\) must be a whole number >= 1"):
        UsageTracker(home / "u.json", flush_size=0)


def test_poll_interval_is_accepted_checked_and_changes_nothing(home):
    d = PersistentDelivery(db_path=home / "q.db", api_base="http://127.0.0.1:9", poll_interval=0.01)
    try:
        assert d.config.poll_interval == 0.01
        assert d._pipeline.settings == d.config.settings()  # poll_interval is not part of it
        assert d._pipeline.settings == DeliveryConfig.resolve(
            ini_manager=IniManager(home / "none.ini"), env={}, db_path=str(home / "q.db"),
            api_base="http://127.0.0.1:9").settings()
    finally:
        d.stop(1)
    with pytest.raises(ConfigError, match="poll_interval"):
        PersistentDelivery(db_path=home / "q.db", poll_interval=0)


# -- the same bad value, the same error, from every facade ---------------------------------------
def _facades(home):
    return {
        "PersistentDelivery": lambda **kw: PersistentDelivery(db_path=home / "q.db", **kw),
        "TelemetryClient": lambda **kw: TelemetryClient(base_dir=str(home / "t"), **kw),
        "Meter": lambda **kw: Meter("memory", **kw),
        "UsageTracker": lambda **kw: UsageTracker(home / "u.json", **kw),
        "Pipeline": lambda **kw: Pipeline(CollectSink(), **kw),
        "Settings": lambda **kw: Settings(**kw),
    }


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("max_backoff", 0, "max_backoff=0 (from argument) must be a positive number"),
    ("durability", "eventually",
     "durability='eventually' (from argument) must be one of buffered, committed, fsync, memory"),
    ("exit_timeout", "soon", "exit_timeout='soon' (from argument) must be a positive number"),
])
def test_same_bad_value_same_error_everywhere(home, key, value, expected):
    messages = {}
    for name, make in _facades(home).items():
        with pytest.raises(ConfigError) as err:
            make(**{key: value})
        messages[name] = str(err.value)
    assert messages == dict.fromkeys(messages, expected)


def test_same_bad_value_from_the_environment_names_the_variable(home):
    with pytest.raises(ConfigError) as a:
        DeliveryConfig.resolve(ini_manager=IniManager(home / "none.ini"), env={"USAGELEDGER_FLUSH_INTERVAL": "-1"})
    with pytest.raises(ConfigError) as b:
        TelemetryConfig.from_env(env={"USAGELEDGER_TELEMETRY_FLUSH_INTERVAL": "-1"})
    assert str(a.value) == "flush_interval='-1' (from environment USAGELEDGER_FLUSH_INTERVAL) must be a positive number"
    assert str(b.value) == str(a.value).replace("USAGELEDGER_", "USAGELEDGER_TELEMETRY_")
