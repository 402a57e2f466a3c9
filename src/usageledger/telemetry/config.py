"""TelemetryConfig: keyword arguments > the ``[telemetry]`` section of the INI file >
``USAGELEDGER_TELEMETRY_<KEY>`` > the original client's environment names > defaults (the
one resolver of :mod:`usageledger.settings`). A bad value fails at construction with a
``ConfigError`` naming the key, the value and where it came from."""

from __future__ import annotations

import dataclasses
import ipaddress
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..core import paths
from ..core.redact import redact_url
from ..core.settings import DEFAULTS, ConfigError, IniManager, Settings, check_known, parse, resolve

__all__ = [
    "TelemetryConfig", "ConfigError", "ENV_PREFIX", "ENV_ALIASES", "INI_SECTION", "is_local_url",
    "sheets_url_problem",
]

ENV_PREFIX = "USAGELEDGER_TELEMETRY_"
#: the section of the INI file (``USAGELEDGER_INI_PATH``, else the user config dir) read
INI_SECTION = "telemetry"
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


def _env_names(name: str) -> tuple[str, ...]:
    return (ENV_PREFIX + name.upper(), *ENV_ALIASES.get(name, ()))


def _default_base_dir() -> str:
    return str(paths.telemetry_dir())


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
    durability: str = DEFAULTS.durability
    flush_interval: float = DEFAULTS.flush_interval
    batch_interval: float = DEFAULTS.batch_interval
    #: collector outages are waited out: ~100 attempts with backoff capped at max_backoff
    max_attempts: int = 100
    max_backoff: float = DEFAULTS.max_backoff
    exit_timeout: float = DEFAULTS.exit_timeout
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
            # the check of usageledger.settings.PARSERS, shared with PersistentDelivery and
            # the pipeline: the same bad value gives the same error
            object.__setattr__(self, name, parse(name, getattr(self, name), src))
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
    def from_env(cls, env: Mapping[str, str] | None = None, ini_manager: IniManager | None = None,
                 **arguments: Any) -> TelemetryConfig:
        """Arguments > the INI file's ``[telemetry]`` section > ``USAGELEDGER_TELEMETRY_<KEY>``
        > the names in :data:`ENV_ALIASES` > defaults. The INI file is ``ini_manager``'s, else
        the one ``USAGELEDGER_INI_PATH`` (in ``env``) names, else the user config dir's."""
        check_known("telemetry settings", arguments, _FIELDS)
        if ini_manager is None:
            ini_manager = IniManager(IniManager.resolve_path(env=env))
        values, sources = resolve(_FIELDS, arguments, env=env, env_names=_env_names,
                                  ini=ini_manager, section=INI_SECTION)
        return cls(**values, sources=sources)

    def settings(self, **changes: Any) -> Settings:
        """The mechanism's settings of this configuration, with ``changes`` (a journal per
        destination: ``journal_path``, ``journal_url``)."""
        own = {k: getattr(self, k) for k in _SHARED}
        sources = {k: self.sources.get(k, "argument") for k in _SHARED}
        return Settings(**own, sources=sources).replace(**changes)

    def replace(self, **changes: Any) -> TelemetryConfig:
        """A copy with ``changes`` (validated; paths derived from ``base_dir`` follow it)."""
        check_known("telemetry settings", changes, _FIELDS)
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

#: keys of the mechanism (Settings) a TelemetryClient takes
_SHARED = tuple(k for k in _FIELDS if k in Settings.__dataclass_fields__ and k != "journal_url")


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
