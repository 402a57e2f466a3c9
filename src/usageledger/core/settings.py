"""Settings: the one home of every knob, its default and its validation.

- :class:`Settings` is the frozen object the mechanism (Pipeline, Recorder, Dispatcher)
  runs on: durability, group-commit interval, buffer bound, batching, retry policy,
  concurrency, timeouts and the journal's location. Facades build one and pass it down.
- :data:`PARSERS` checks a value of any key of any facade (delivery, telemetry and the
  mechanism share their keys, so the same bad value gives the same error everywhere),
  and :func:`config_error` words every error the same way: the key, the value (secrets
  hidden) and where it came from.
- :func:`resolve` applies the one precedence order every facade uses:
  arguments > the facade's section of the INI file > environment > defaults.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageLedgerError
from . import paths
from .redact import redact_url

__all__ = [
    "Settings", "DEFAULTS", "ConfigError", "IniManager", "resolve", "config_error", "PARSERS",
    "ENV_PREFIX", "INI_SECTION", "DURABILITIES", "NO_OP_KEYS",
]

ENV_PREFIX = "USAGELEDGER_"
#: the section of the INI file PersistentDelivery reads (the original client's name)
INI_SECTION = "tracker"
DURABILITIES = ("buffered", "committed", "fsync", "memory")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: keywords accepted for compatibility that change nothing: checked, then dropped. The
#: dispatcher is woken by its own process's commits and looks at the journal every
#: ``batch_interval`` (which also picks up other processes' records): a poll has no job
#: left to do.
NO_OP_KEYS = frozenset({"poll_interval"})


class ConfigError(UsageLedgerError, ValueError):
    """A configuration value is invalid; the message names key, value and source."""


# -- the INI file ------------------------------------------------------------------------------
class IniManager:
    """The INI file holding a ``[tracker]`` section (and ``[telemetry]``, ``[kv]``)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        self._parser = configparser.ConfigParser(interpolation=None)
        if self.path.exists():
            try:
                self._parser.read(self.path, encoding="utf-8")
            except (configparser.Error, UnicodeDecodeError) as exc:
                raise ConfigError(f"INI file {self.path} cannot be parsed: {exc}") from None

    @staticmethod
    def resolve_path(path: str | os.PathLike[str] | None = None,
                     env: Mapping[str, str] | None = None) -> Path:
        """Explicit path > ``USAGELEDGER_INI_PATH`` > the user config dir."""
        if path is not None:
            return Path(path).expanduser()
        found = (os.environ if env is None else env).get(f"{ENV_PREFIX}INI_PATH")
        if found:
            return Path(found).expanduser()
        return paths.ini_file()

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


# -- the resolver ------------------------------------------------------------------------------
def resolve(
    names: Iterable[str],
    arguments: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    env_names: Callable[[str], Sequence[str]] | None = None,
    ini: IniManager | None = None,
    section: str = INI_SECTION,
    base: Callable[[str], tuple[Any, str]] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """For each key of ``names``: the first place that sets it, in the one order every
    facade uses: ``arguments`` (None counts as unset) > ``section`` of ``ini`` >
    the environment variables ``env_names(key)`` (in order; empty ones are unset) >
    ``base(key)`` (an earlier configuration's value and source) > the default.

    Returns the values found (raw: text from the INI file or the environment is parsed by
    the caller's checks) and, for every key, where it came from: ``"argument"``,
    ``"INI file PATH [section]"``, ``"environment NAME"`` or ``"default"``.
    """
    env = os.environ if env is None else env
    from_ini = ini.section(section) if ini is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in names:
        if arguments.get(name) is not None:
            values[name], sources[name] = arguments[name], "argument"
            continue
        if name in from_ini:
            values[name], sources[name] = from_ini[name], f"INI file {ini.path} [{section}]"  # type: ignore[union-attr]
            continue
        for var in env_names(name) if env_names is not None else ():
            if env.get(var) not in (None, ""):
                values[name], sources[name] = env[var], f"environment {var}"
                break
        else:
            if base is not None:
                values[name], sources[name] = base(name)
            else:
                sources[name] = "default"
    return values, sources


def prefixed(prefix: str) -> Callable[[str], tuple[str, ...]]:
    """``env_names`` for keys read from ``<prefix><KEY>``."""
    return lambda name: (prefix + name.upper(),)


def check_known(kind: str, given: Iterable[str], known: Iterable[str]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"unknown {kind} {unknown}; known: {sorted(known)}")


# -- checks: one per key, shared by every facade ------------------------------------------------
Bad = Callable[[str], ConfigError]
_SECRETS = frozenset({"api_key", "sheets_token", "password"})
_URLS = frozenset({"api_base"})


def config_error(key: str, value: Any, source: str, expected: str) -> ConfigError:
    """``key=value (from source) must be expected``; a secret's value is never shown, a
    URL's credentials are masked."""
    if key in _SECRETS and value is not None:
        return ConfigError(f"{key} (a {type(value).__name__}, from {source}) must be {expected}")
    shown = redact_url(value) if key in _URLS and isinstance(value, str) else value
    return ConfigError(f"{key}={shown!r} (from {source}) must be {expected}")


def parse(key: str, value: Any, source: str, parser: Callable[[Any, Bad], Any] | None = None) -> Any:
    """``value`` checked (and converted from text) by the check of ``key``."""
    check = parser or PARSERS[key]
    return check(value, lambda expected: config_error(key, value, source, expected))


def parse_positive_float(value: Any, bad: Bad) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad("a positive number") from None
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        raise bad("a positive number")
    return number


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any, bad: Bad) -> float:
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


_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


def parse_bool(value: Any, bad: Bad) -> bool:
    if isinstance(value, bool):
        return value
    parsed = _BOOLS.get(str(value).strip().lower())
    if parsed is None:
        raise bad(f"a boolean ({'/'.join(_BOOLS)})")
    return parsed


def parse_path(value: Any, bad: Bad) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise bad("a path")
    return str(Path(value).expanduser())


def parse_journal_url(value: Any, bad: Bad) -> str | None:
    from .journal import check_journal_url

    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad("a journal URL such as redis://host:6379/0?stream=NAME")
    try:
        return check_journal_url(value)
    except ValueError as exc:
        raise bad(f"a journal URL such as redis://host:6379/0?stream=NAME ({exc})") from None


def whole(minimum: int = 1, *, optional: bool = False) -> Callable[[Any, Bad], int | None]:
    """A whole number >= ``minimum`` (None allowed when ``optional``)."""

    def parse_whole(value: Any, bad: Bad) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool | float):
            raise bad("a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise bad("a whole number") from None
        if number < minimum:
            raise bad(f"a whole number >= {minimum}")
        return number

    return parse_whole


def one_of(choices: Sequence[str], *, upper: bool = False) -> Callable[[Any, Bad], str]:
    def parse_choice(value: Any, bad: Bad) -> str:
        text = str(value).upper() if upper and isinstance(value, str) else value
        if text not in choices:
            raise bad(f"one of {', '.join(choices)}")
        return text

    return parse_choice


def http_url(value: Any, bad: Bad) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise bad("an http:// or https:// URL")
    return value


def text(value: Any, bad: Bad) -> str:
    if not isinstance(value, str):
        raise bad("a string")
    return value


def optional_text(value: Any, bad: Bad) -> str | None:
    if value is None:
        return None
    return text(value, bad) or None


def non_empty_text(value: Any, bad: Bad) -> str:
    if not text(value, bad):
        raise bad("a non-empty string")
    return value


def compression(value: Any, bad: Bad) -> str | None:
    if value in (None, "", "none", "None"):
        return None
    if value != "gzip":
        raise bad("'gzip' or none")
    return value


#: the check of every key of every facade, by name. A key two facades share (delivery and
#: telemetry share most) is one entry here, so both accept and refuse the same values.
PARSERS: dict[str, Callable[[Any, Bad], Any]] = {
    # the mechanism (Settings)
    "durability": one_of(DURABILITIES),
    "flush_interval": parse_positive_float,
    "max_buffer": whole(1),
    "batch_interval": parse_positive_float,
    "max_batch_size": whole(1),
    "max_batch_bytes": whole(1),
    "max_attempts": whole(1, optional=True),
    "max_retry_age": parse_duration,
    "base_delay": parse_positive_float,
    "max_backoff": parse_positive_float,
    "max_in_flight": whole(1),
    "lease_s": parse_positive_float,
    "exit_timeout": parse_positive_float,
    "journal_path": parse_path,
    "journal_url": parse_journal_url,
    "fallback_dir": parse_path,
    # the facades' names for mechanism keys, and the no-ops
    "immediate_pause_seconds": parse_positive_float,  # PersistentDelivery: base_delay
    "max_retries": whole(0, optional=True),  # PersistentDelivery: max_attempts - 1
    "flush_size": whole(1),  # UsageTracker: max_batch_size
    "poll_interval": parse_positive_float,
    # delivery to the collector
    "api_key": optional_text,
    "api_base": http_url,
    "api_url": text,
    "timeout": parse_positive_float,
    "compress": compression,
    "db_path": parse_path,
    "log_file": parse_path,
    "log_level": one_of(LOG_LEVELS, upper=True),
    "log_bodies": parse_bool,
    # telemetry
    "base_dir": parse_path,
    "database_path": parse_path,
    "ndjson_dir": parse_path,
    "journal_dir": parse_path,
    "agent_owner": optional_text,
    "host": optional_text,
    "api_enabled": parse_bool,
    "sheets_enabled": parse_bool,
    "sheets_spreadsheet_id": optional_text,
    "sheets_range": non_empty_text,
    "sheets_token": optional_text,
    "sheets_credentials_file": parse_path,
    "sheets_api_url": lambda value, bad: http_url(value, bad).rstrip("/"),
    "sheets_allow_insecure_local": parse_bool,
}


# -- the mechanism's settings -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    """What a :class:`~usageledger.pipeline.Pipeline` runs on. Frozen: a copy with changes
    comes from :meth:`replace`. Every value is checked at construction by :data:`PARSERS`,
    and an error names the key, the value and ``sources[key]`` (default ``"argument"``)."""

    #: ``buffered`` (commit within ``flush_interval``), ``committed``, ``fsync``, ``memory``
    durability: str = "buffered"
    #: seconds between group commits of the buffer to the journal
    flush_interval: float = 0.05
    #: records held in memory before the caller writes them itself
    max_buffer: int = 100_000
    #: a partial batch is sent after this many seconds
    batch_interval: float = 0.5
    max_batch_size: int = 100
    max_batch_bytes: int = 4 * 1024 * 1024
    #: None: transient failures retry until ``max_retry_age``; a number dead-letters a record
    #: after that many attempts as well
    max_attempts: int | None = None
    #: seconds a record keeps retrying transient failures (3 days)
    max_retry_age: float = 3 * 86400.0
    #: first backoff delay and first probe interval during an outage
    base_delay: float = 0.5
    #: cap of the backoff and of the probe interval
    max_backoff: float = 60.0
    #: batches in flight at once, for sinks that take concurrent sends
    max_in_flight: int = 2
    #: how long a dispatcher's lease on a journal lasts without renewal
    lease_s: float = 15.0
    #: how long interpreter exit and SIGTERM wait for delivery after writing the buffer
    exit_timeout: float = 2.0
    #: the SQLite journal file (None: a memory journal); with ``journal_url``, the local
    #: fallback journal
    journal_path: str | None = None
    #: a journal off the box: ``redis://host:port/db?stream=NAME``
    journal_url: str | None = None
    #: where fallback journals go (default ``<cache dir>/fallback``)
    fallback_dir: str | None = None
    #: where each value came from (for error messages)
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in SETTINGS_KEYS:
            value = parse(name, getattr(self, name), self.sources.get(name, "argument"))
            object.__setattr__(self, name, value)
        if self.durability == "memory":  # nothing on disk: no journal to name
            object.__setattr__(self, "journal_path", None)
            object.__setattr__(self, "journal_url", None)

    def replace(self, _source: str = "argument", **changes: Any) -> Settings:
        """A checked copy with ``changes`` (keys of Settings, plus the no-op
        ``poll_interval``); ``None`` leaves a key as it is."""
        check_known("settings", changes, (*SETTINGS_KEYS, *NO_OP_KEYS))
        values = {n: getattr(self, n) for n in SETTINGS_KEYS}
        sources = dict(self.sources)
        for name, value in changes.items():
            if name in NO_OP_KEYS:
                if value is not None:
                    parse(name, value, _source)
                continue
            if value is None:
                continue
            values[name], sources[name] = value, _source
        return Settings(**values, sources=sources)


SETTINGS_KEYS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "sources")
#: the defaults, written once: facades start from these
DEFAULTS = Settings()
