"""Delivery configuration: arguments > ``[tracker]`` section of the INI file >
``USAGELEDGER_*`` environment > defaults (the one resolver of :mod:`usageledger.settings`).
A bad value fails at construction naming the key, the value and where it came from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from . import paths
from .redact import REDACTED, redact_url
from .settings import (
    DEFAULTS,
    DURABILITIES,
    ENV_PREFIX,
    INI_SECTION,
    ConfigError,
    IniManager,
    Settings,
    check_known,
    parse,
    parse_bool,
    parse_duration,
    parse_journal_url,
    parse_path,
    parse_positive_float,
    prefixed,
    resolve,
)

__all__ = ["DeliveryConfig", "IniManager", "ConfigError", "ENV_PREFIX", "DURABILITIES"]

# the value checks live in usageledger.settings; these names stay importable from here
__all__ += ["parse_bool", "parse_duration", "parse_journal_url", "parse_path", "parse_positive_float"]


def _default_db_path() -> str:
    return str(paths.delivery_journal())


@dataclasses.dataclass(frozen=True)
class DeliveryConfig:
    """Every setting of PersistentDelivery. Build with :meth:`resolve` to apply the
    precedence rules; direct construction takes values as given (and validates them).
    :meth:`settings` gives the mechanism's part as a :class:`~usageledger.settings.Settings`."""

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
    #: accepted and checked for compatibility with the original client; changes nothing
    #: (see usageledger.settings.NO_OP_KEYS)
    poll_interval: float = 1.0
    batch_interval: float = DEFAULTS.batch_interval
    #: the original client's name of ``Settings.base_delay``
    immediate_pause_seconds: float = DEFAULTS.base_delay
    #: None: transient failures retry until ``max_retry_age``; a number dead-letters a record
    #: after that many attempts as well
    max_attempts: int | None = DEFAULTS.max_attempts
    #: seconds (or "90s", "30m", "12h", "3d") a record keeps retrying transient failures
    max_retry_age: float = DEFAULTS.max_retry_age
    max_retries: int | None = None
    max_batch_size: int = DEFAULTS.max_batch_size
    durability: str = DEFAULTS.durability
    flush_interval: float = DEFAULTS.flush_interval
    max_buffer: int = DEFAULTS.max_buffer
    max_backoff: float = DEFAULTS.max_backoff
    max_batch_bytes: int = DEFAULTS.max_batch_bytes
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
        for name in _FIELDS:
            src = self.sources.get(name, "argument")
            object.__setattr__(self, name, parse(name, getattr(self, name), src))

    @classmethod
    def resolve(
        cls,
        ini_manager: IniManager | None = None,
        env: Mapping[str, str] | None = None,
        base: DeliveryConfig | None = None,
        **arguments: Any,
    ) -> DeliveryConfig:
        """Arguments > INI ``[tracker]`` > environment > ``base`` (or defaults)."""
        for alias in [k for k in arguments if k.startswith("aicm_")]:
            arguments.setdefault(alias[5:], arguments.pop(alias))
        check_known("configuration keys", arguments, _FIELDS)
        if ini_manager is None:
            ini_manager = IniManager(IniManager.resolve_path())
        values, sources = resolve(
            _FIELDS, arguments, env=env, env_names=prefixed(ENV_PREFIX), ini=ini_manager,
            section=INI_SECTION,
            base=None if base is None else lambda n: (getattr(base, n), base.sources.get(n, "default")),
        )
        if values.get("max_retries") is not None and "max_attempts" not in values:
            # the original client's spelling: retries after the first attempt
            values["max_attempts"] = int(parse("max_retries", values["max_retries"], sources["max_retries"])) + 1
            sources["max_attempts"] = f"max_retries ({sources['max_retries']})"
        return cls(**values, sources=sources)

    def settings(self, **changes: Any) -> Settings:
        """The mechanism's settings of this configuration (``immediate_pause_seconds`` is
        ``base_delay``; ``poll_interval`` changes nothing), with ``changes``."""
        own = {k: getattr(self, k) for k in _SHARED}
        own.update(journal_path=self.db_path, journal_url=self.journal_url,
                   base_delay=self.immediate_pause_seconds)
        sources = {k: self.sources.get(k, "argument") for k in _SHARED}
        sources.update(journal_path=self.sources.get("db_path", "argument"),
                       base_delay=self.sources.get("immediate_pause_seconds", "argument"))
        return Settings(**own, sources=sources).replace(**changes)


_FIELDS = tuple(f.name for f in dataclasses.fields(DeliveryConfig) if f.name != "sources")
#: keys DeliveryConfig and Settings both have, under the same name
_SHARED = tuple(k for k in _FIELDS if k in Settings.__dataclass_fields__)
