"""Delivery configuration: arguments > ``[tracker]`` section of the INI file >
``USAGELEDGER_*`` environment > defaults. A bad value fails at construction naming the
key, the value and where it came from."""

from __future__ import annotations

import configparser
import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import platformdirs

from .errors import UsageLedgerError
from .redact import REDACTED, redact_url

__all__ = ["DeliveryConfig", "IniManager", "ConfigError", "ENV_PREFIX", "DURABILITIES"]

ENV_PREFIX = "USAGELEDGER_"
INI_SECTION = "tracker"
DURABILITIES = ("buffered", "committed", "fsync", "memory")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(UsageLedgerError, ValueError):
    """A configuration value is invalid; the message names key, value and source."""


class IniManager:
    """The INI file holding a ``[tracker]`` section."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        self._parser = configparser.ConfigParser(interpolation=None)
        if self.path.exists():
            try:
                self._parser.read(self.path, encoding="utf-8")
            except (configparser.Error, UnicodeDecodeError) as exc:
                raise ConfigError(f"INI file {self.path} cannot be parsed: {exc}") from None

    @staticmethod
    def resolve_path(path: str | os.PathLike[str] | None = None) -> Path:
        """Explicit path > ``USAGELEDGER_INI_PATH`` > the user config dir."""
        if path is not None:
            return Path(path).expanduser()
        env = os.environ.get(f"{ENV_PREFIX}INI_PATH")
        if env:
            return Path(env).expanduser()
        return Path(platformdirs.user_config_dir("usageledger")) / "usageledger.ini"

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        return self._parser.get(section, key, fallback=default)

    def section(self, section: str = INI_SECTION) -> dict[str, str]:
        return dict(self._parser[section]) if self._parser.has_section(section) else {}

    def set_option(self, section: str, key: str, value: str) -> None:
        """Set and save atomically (temp file, fsync, rename)."""
        if not self._parser.has_section(section):
            self._parser.add_section(section)
        self._parser.set(section, key, str(value))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                self._parser.write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _default_db_path() -> str:
    return str(Path(platformdirs.user_data_dir("usageledger")) / "queue.db")


@dataclasses.dataclass(frozen=True)
class DeliveryConfig:
    """Every setting of PersistentDelivery. Build with :meth:`resolve` to apply the
    precedence rules; direct construction takes values as given (and validates them)."""

    api_key: str | None = None
    api_base: str = "http://127.0.0.1:8765"
    api_url: str = "/api/v1"
    db_path: str = dataclasses.field(default_factory=_default_db_path)
    #: a journal off the box (``redis://host:port/db?stream=NAME``); ``db_path`` is then
    #: the local fallback journal
    journal_url: str | None = None
    log_file: str | None = None
    log_level: str = "INFO"
    log_bodies: bool = False
    timeout: float = 10.0
    poll_interval: float = 1.0
    batch_interval: float = 0.5
    immediate_pause_seconds: float = 0.5
    #: None: transient failures retry until ``max_retry_age``; a number dead-letters a record
    #: after that many attempts as well
    max_attempts: int | None = None
    #: seconds (or "90s", "30m", "12h", "3d") a record keeps retrying transient failures
    max_retry_age: float = 3 * 86400.0
    max_retries: int | None = None
    max_batch_size: int = 100
    durability: str = "buffered"
    flush_interval: float = 0.05
    max_buffer: int = 100_000
    max_backoff: float = 60.0
    max_batch_bytes: int = 4 * 1024 * 1024
    compress: str | None = "gzip"
    #: where each value came from: "argument", "INI file PATH [tracker]", "environment NAME", "default"
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __repr__(self) -> str:
        # the key never, and a URL's credentials never, in tracebacks, logs or a REPL
        shown = []
        for name in _FIELDS:
            value = getattr(self, name)
            if name == "api_key" and value is not None:
                value = REDACTED
            elif name == "api_base":
                value = redact_url(value)
            shown.append(f"{name}={value!r}")
        return f"DeliveryConfig({', '.join(shown)})"

    def __post_init__(self) -> None:
        for f in _FIELDS.values():
            value = getattr(self, f.name)
            src = self.sources.get(f.name, "argument")
            object.__setattr__(self, f.name, _parse(f.name, value, src))

    @classmethod
    def resolve(
        cls,
        ini_manager: IniManager | None = None,
        env: Mapping[str, str] | None = None,
        base: DeliveryConfig | None = None,
        **arguments: Any,
    ) -> DeliveryConfig:
        """Arguments > INI ``[tracker]`` > environment > ``base`` (or defaults)."""
        env = os.environ if env is None else env
        for alias in [k for k in arguments if k.startswith("aicm_")]:
            arguments.setdefault(alias[5:], arguments.pop(alias))
        unknown = sorted(set(arguments) - set(_FIELDS))
        if unknown:
            raise TypeError(f"unknown configuration keys {unknown}; known: {sorted(_FIELDS)}")
        if ini_manager is None:
            ini_manager = IniManager(IniManager.resolve_path())
        ini = ini_manager.section(INI_SECTION)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in _FIELDS:
            env_name = ENV_PREFIX + name.upper()
            if name in arguments and arguments[name] is not None:
                values[name], sources[name] = arguments[name], "argument"
            elif name in ini:
                values[name], sources[name] = ini[name], f"INI file {ini_manager.path} [{INI_SECTION}]"
            elif env.get(env_name) not in (None, ""):
                values[name], sources[name] = env[env_name], f"environment {env_name}"
            elif base is not None:
                values[name], sources[name] = getattr(base, name), base.sources.get(name, "default")
            else:
                sources[name] = "default"
        if values.get("max_retries") is not None and "max_attempts" not in values:
            # the original client's spelling: retries after the first attempt
            values["max_attempts"] = int(_parse("max_retries", values["max_retries"], sources["max_retries"])) + 1
            sources["max_attempts"] = f"max_retries ({sources['max_retries']})"
        return cls(**values, sources=sources)


_FIELDS = {f.name: f for f in dataclasses.fields(DeliveryConfig) if f.name != "sources"}

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_POSITIVE_FLOATS = {"timeout", "poll_interval", "batch_interval", "immediate_pause_seconds",
                    "flush_interval", "max_backoff"}
_POSITIVE_INTS = {"max_attempts", "max_batch_size", "max_buffer", "max_batch_bytes"}
_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


# value parsers shared with telemetry.config: ``bad(expected)`` builds the error naming the
# key, the value and its source


def parse_positive_float(value: Any, bad: Callable[[str], ConfigError]) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad("a positive number") from None
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        raise bad("a positive number")
    return number


def parse_duration(value: Any, bad: Callable[[str], ConfigError]) -> float:
    """Seconds, as a number or text with an optional unit: ``"90"``, ``"90s"``, ``"30m"``,
    ``"12h"``, ``"3d"``."""
    expected = "a positive duration (seconds, or a number with s, m, h or d)"
    if isinstance(value, str):
        text = value.strip().lower()
        unit = _DURATION_UNITS.get(text[-1:]) if text else None
        if unit is not None:
            try:
                return parse_positive_float(text[:-1], bad) * unit
            except ConfigError:
                raise bad(expected) from None
    try:
        return parse_positive_float(value, bad)
    except ConfigError:
        raise bad(expected) from None


def parse_bool(value: Any, bad: Callable[[str], ConfigError]) -> bool:
    if isinstance(value, bool):
        return value
    parsed = _BOOLS.get(str(value).strip().lower())
    if parsed is None:
        raise bad(f"a boolean ({'/'.join(_BOOLS)})")
    return parsed


def parse_path(value: Any, bad: Callable[[str], ConfigError]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise bad("a path")
    return str(Path(value).expanduser())


def parse_journal_url(value: Any, bad: Callable[[str], ConfigError]) -> str | None:
    from .journal import check_journal_url

    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad("a journal URL such as redis://host:6379/0?stream=NAME")
    try:
        return check_journal_url(value)
    except ValueError as exc:
        raise bad(f"a journal URL such as redis://host:6379/0?stream=NAME ({exc})") from None


def _parse(key: str, value: Any, source: str) -> Any:
    def bad(expected: str) -> ConfigError:
        if key == "api_key":  # say what is wrong without showing the key
            return ConfigError(f"api_key (a {type(value).__name__}, from {source}) must be {expected}")
        shown = redact_url(value) if key == "api_base" and isinstance(value, str) else value
        return ConfigError(f"{key}={shown!r} (from {source}) must be {expected}")

    if key in _POSITIVE_FLOATS:
        return parse_positive_float(value, bad)
    if key == "max_retry_age":
        return parse_duration(value, bad)
    if key in _POSITIVE_INTS or key == "max_retries":
        if value is None and key in ("max_retries", "max_attempts"):
            return None
        if isinstance(value, bool) or isinstance(value, float):
            raise bad("a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise bad("a whole number") from None
        if number < (0 if key == "max_retries" else 1):
            raise bad("a whole number >= 1" if key != "max_retries" else "a whole number >= 0")
        return number
    if key == "log_bodies":
        return parse_bool(value, bad)
    if key == "durability":
        if value not in DURABILITIES:
            raise bad(f"one of {', '.join(DURABILITIES)}")
        return value
    if key == "log_level":
        level = str(value).upper()
        if level not in LOG_LEVELS:
            raise bad(f"one of {', '.join(LOG_LEVELS)}")
        return level
    if key == "compress":
        if value in (None, "", "none", "None"):
            return None
        if value != "gzip":
            raise bad("'gzip' or none")
        return value
    if key in ("db_path", "log_file"):
        return parse_path(value, bad)
    if key == "journal_url":
        return parse_journal_url(value, bad)
    if key in ("api_base", "api_url"):
        if not isinstance(value, str):
            raise bad("a string")
        if key == "api_base" and not value.startswith(("http://", "https://")):
            raise bad("an http:// or https:// URL")
        return value
    if key == "api_key":
        if value is not None and not isinstance(value, str):
            raise bad("a string")
        return value or None
    return value
