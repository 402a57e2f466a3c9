"""TelemetryConfig: keyword arguments > ``USAGELEDGER_TELEMETRY_<KEY>`` > the original client's
environment names > defaults. A bad value fails at construction with a ``ConfigError``
naming the key, the value and where it came from."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from ..config import ConfigError, parse_bool, parse_journal_url, parse_path, parse_positive_float
from ..config import _parse as _parse_delivery_key
from ..redact import redact_url

__all__ = [
    "TelemetryConfig", "ConfigError", "ENV_PREFIX", "ENV_ALIASES", "is_local_url",
    "sheets_url_problem",
]

ENV_PREFIX = "USAGELEDGER_TELEMETRY_"
#: other environment names read for a key when ``USAGELEDGER_TELEMETRY_<KEY>`` is unset,
#: in order: the original client's names, and the collector settings shared with PersistentDelivery
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "base_dir": ("TELEMETRY_BASE_DIR", "AGENT_METRICS_DIR"),
    "database_path": ("TELEMETRY_DB_PATH",),
    "ndjson_dir": ("TELEMETRY_NDJSON_DIR",),
    "agent_owner": ("AGENT_OWNER",),
    "api_base": ("USAGELEDGER_API_BASE",),
    "api_url": ("USAGELEDGER_API_URL",),
    "api_key": ("USAGELEDGER_API_KEY",),
    "journal_url": ("USAGELEDGER_JOURNAL_URL",),
    "sheets_enabled": ("GOOGLE_SHEETS_API_ENABLED",),
    "sheets_api_url": ("GOOGLE_SHEETS_API_URL",),
    "sheets_credentials_file": ("GOOGLE_APPLICATION_CREDENTIALS",),
}


def _default_base_dir() -> str:
    return str(Path(platformdirs.user_data_dir("usageledger")) / "telemetry")


@dataclasses.dataclass(frozen=True)
class TelemetryConfig:
    """Every setting of :class:`~usageledger.telemetry.TelemetryClient`."""

    #: data directory; the three paths below default to places inside it
    base_dir: str = dataclasses.field(default_factory=_default_base_dir)
    #: SQLite file with the ``agent_runs`` table (default ``<base_dir>/db/telemetry.sqlite``)
    database_path: str | None = None
    #: where the daily ``events_YYYYMMDD.ndjson`` files go (default ``<base_dir>/raw``)
    ndjson_dir: str | None = None
    #: one journal file per destination (default ``<base_dir>/journal``)
    journal_dir: str | None = None
    #: journals on Redis streams (``redis://host:port/db?stream=NAME``) for the destinations
    #: every host shares (collector, Sheets): one stream each, ``NAME.<destination>``; the
    #: local-file destinations keep their journals in ``journal_dir``, also the fallback
    journal_url: str | None = None
    agent_owner: str | None = None
    #: recorded in every run (default: this machine's name)
    host: str | None = None
    #: deliver runs to the collector's ``/api/v1/runs/batch``
    api_enabled: bool = True
    api_base: str = "http://127.0.0.1:8765"
    api_url: str = "/api/v1"
    api_key: str | None = None
    timeout: float = 10.0
    durability: str = "buffered"
    flush_interval: float = 0.05
    batch_interval: float = 0.5
    #: collector outages are waited out: ~100 attempts with backoff capped at max_backoff
    max_attempts: int = 100
    max_backoff: float = 60.0
    exit_timeout: float = 2.0
    sheets_enabled: bool = False
    sheets_spreadsheet_id: str | None = None
    sheets_range: str = "Sheet1!A1"
    sheets_token: str | None = None
    sheets_credentials_file: str | None = None
    sheets_api_url: str = "https://sheets.googleapis.com"
    #: let the Sheets export (and its token URI) point at a local http server: tests only
    sheets_allow_insecure_local: bool = False
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in _FIELDS:
            src = self.sources.get(name, "argument")
            object.__setattr__(self, name, _parse(name, getattr(self, name), src))
        base = Path(self.base_dir)
        if self.database_path is None:
            object.__setattr__(self, "database_path", str(base / "db" / "telemetry.sqlite"))
        if self.ndjson_dir is None:
            object.__setattr__(self, "ndjson_dir", str(base / "raw"))
        if self.journal_dir is None:
            object.__setattr__(self, "journal_dir", str(base / "journal"))
        if self.host is None:
            object.__setattr__(self, "host", platform.node() or None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **arguments: Any) -> TelemetryConfig:
        """Arguments > ``USAGELEDGER_TELEMETRY_<KEY>`` > the names in :data:`ENV_ALIASES` >
        defaults."""
        env = os.environ if env is None else env
        unknown = sorted(set(arguments) - set(_FIELDS))
        if unknown:
            raise TypeError(f"unknown telemetry settings {unknown}; known: {sorted(_FIELDS)}")
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in _FIELDS:
            if arguments.get(name) is not None:
                values[name], sources[name] = arguments[name], "argument"
                continue
            for env_name in (ENV_PREFIX + name.upper(), *ENV_ALIASES.get(name, ())):
                if env.get(env_name) not in (None, ""):
                    values[name], sources[name] = env[env_name], f"environment {env_name}"
                    break
            else:
                sources[name] = "default"
        return cls(**values, sources=sources)

    def replace(self, **changes: Any) -> TelemetryConfig:
        """A copy with ``changes`` (validated; paths derived from ``base_dir`` follow it)."""
        unknown = sorted(set(changes) - set(_FIELDS))
        if unknown:
            raise TypeError(f"unknown telemetry settings {unknown}; known: {sorted(_FIELDS)}")
        values = {n: getattr(self, n) for n in _FIELDS}
        sources = dict(self.sources)
        if "base_dir" in changes:
            for derived in ("database_path", "ndjson_dir", "journal_dir"):
                if sources.get(derived, "default") == "default" and derived not in changes:
                    values[derived] = None
        for name, value in changes.items():
            values[name], sources[name] = value, "argument"
        return TelemetryConfig(**values, sources=sources)

    def validate(self) -> None:
        """Raise ``ConfigError`` listing every problem a client would meet at start."""
        errors: list[str] = []
        if self.sheets_enabled:
            src = self.sources.get("sheets_enabled", "argument")
            if not self.sheets_spreadsheet_id:
                errors.append(f"sheets_enabled=true (from {src}) needs sheets_spreadsheet_id")
            if not self.sheets_token and not self.sheets_credentials_file:
                errors.append(
                    f"sheets_enabled=true (from {src}) needs sheets_token (a bearer token) or "
                    "sheets_credentials_file (a service-account JSON key)"
                )
            problem = self.check_sheets_url("sheets_api_url", self.sheets_api_url)
            if problem:
                errors.append(problem)
        if errors:
            raise ConfigError("; ".join(errors))

    def check_sheets_url(self, key: str, url: str) -> str | None:
        """Why ``url`` cannot be used for the Sheets export, or None."""
        if self.sheets_allow_insecure_local:
            return None
        return sheets_url_problem(key, url, self.sources.get(key, "argument"))

    def __repr__(self) -> str:
        shown = []
        for name in _FIELDS:
            value = getattr(self, name)
            if name in ("api_key", "sheets_token") and value:
                value = "***"
            elif name == "api_base" and isinstance(value, str):
                value = redact_url(value)
            shown.append(f"{name}={value!r}")
        return f"TelemetryConfig({', '.join(shown)})"


_FIELDS = {f.name: f for f in dataclasses.fields(TelemetryConfig) if f.name != "sources"}

_BOOL_KEYS = {"api_enabled", "sheets_enabled", "sheets_allow_insecure_local"}
#: keys shared with DeliveryConfig: parsed by its rules, so both clients accept the same values
_DELIVERY_KEYS = {"api_base", "api_url", "api_key", "timeout", "flush_interval", "batch_interval",
                  "max_backoff", "max_attempts", "durability"}
_PATH_KEYS = {"base_dir", "database_path", "ndjson_dir", "journal_dir", "sheets_credentials_file"}


def _parse(key: str, value: Any, source: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}={value!r} (from {source}) must be {expected}")

    if key in _DELIVERY_KEYS:
        return _parse_delivery_key(key, value, source)
    if key in _BOOL_KEYS:
        return parse_bool(value, bad)
    if key == "exit_timeout":
        return parse_positive_float(value, bad)
    if key in _PATH_KEYS:
        return parse_path(value, bad)
    if key == "journal_url":
        return parse_journal_url(value, bad)
    if key == "sheets_api_url":
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise bad("an http:// or https:// URL")
        return value.rstrip("/")
    # the remaining keys are optional strings
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad("a string")
    if key == "sheets_range" and not value:
        raise bad("a non-empty string")
    return value or None


def sheets_url_problem(key: str, url: str, source: str) -> str | None:
    """Why ``url`` (from ``source``) cannot be used for the Google Sheets export, or None."""
    if is_local_url(url):
        return (
            f"{key}={url!r} (from {source}) points at this machine, but the Google Sheets "
            "export talks to the Sheets API (https://sheets.googleapis.com); a local URL "
            "answers 404 to every row. Disable the export (sheets_enabled=false) or set "
            "the real endpoint (sheets_allow_insecure_local=true is for test servers)"
        )
    if not url.startswith("https://"):
        return f"{key}={url!r} (from {source}) must be an https:// URL (it carries a bearer token)"
    return None


def is_local_url(url: str) -> bool:
    """True when ``url``'s host is this machine (localhost, a loopback or unspecified IP)."""
    host = (urlsplit(url).hostname or "").lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified
