"""Building stores: ``create_store(kind, **options)``, settings from arguments, the
``[kv]`` section of the INI file and ``USAGELEDGER_KV_*`` environment variables (the one
resolver of :mod:`usageledger.settings`), and the one explicit default store behind
``configure_global_store`` / ``get_global_store``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core import paths
from ..core.settings import ENV_PREFIX, IniManager, config_error, resolve
from .base import SERIALIZERS, KVConfigError, KVStore, ttl_seconds

__all__ = [
    "create_store", "store_options_from_env", "configure_global_store", "get_global_store",
    "set_global_store", "reset_global_store", "KV_ENV", "STORE_TYPES",
]

STORE_TYPES = ("memory", "sqlite", "redis")
_KV = f"{ENV_PREFIX}KV_"

#: environment variable -> create_store option
KV_ENV = {
    f"{_KV}TYPE": "store_type",
    f"{_KV}KEY_PREFIX": "key_prefix",
    f"{_KV}SERIALIZER": "serializer",
    f"{_KV}DEFAULT_TTL": "default_ttl",
    f"{_KV}SQLITE_PATH": "path",
    f"{_KV}REDIS_URL": "url",
    f"{_KV}REDIS_HOST": "host",
    f"{_KV}REDIS_PORT": "port",
    f"{_KV}REDIS_PASSWORD": "password",
    f"{_KV}REDIS_DB": "db",
}

#: create_store option -> environment variable
_ENV_OF = {opt: var for var, opt in KV_ENV.items()}
#: the section of the INI file (``USAGELEDGER_INI_PATH``, else the user config dir) read,
#: with the option names as keys (``store_type``, ``path``, ``url``, ``port``...)
INI_SECTION = "kv"

DEFAULT_KEY_PREFIX = "usageledger:"


def default_sqlite_path() -> str:
    return str(paths.kv_sqlite_file())


def _env_names(option: str) -> tuple[str, ...]:
    var = _ENV_OF.get(option)
    return () if var is None else (var,)


def _bad(name: str, value: Any, source: str, expected: str) -> KVConfigError:
    return KVConfigError(str(config_error(name, value, source, expected)))


def _int(name: str, value: Any, source: str, low: int, high: int) -> int:
    if isinstance(value, bool | float):
        raise _bad(name, value, source, f"a whole number from {low} to {high}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _bad(name, value, source, f"a whole number from {low} to {high}") from None
    if not low <= number <= high:
        raise _bad(name, value, source, f"a whole number from {low} to {high}")
    return number


def _validate(options: dict[str, Any], sources: Mapping[str, str]) -> dict[str, Any]:
    """Check and convert values (strings from the environment included) in place."""

    def src(opt: str) -> tuple[str, str]:
        where = sources.get(opt, "argument")
        return (where.split()[-1] if where.startswith("environment") else opt), where

    if "store_type" in options:
        value = options["store_type"]
        st = value.strip().lower() if isinstance(value, str) else value
        if st not in STORE_TYPES:
            name, where = src("store_type")
            raise _bad(name, value, where, f"one of {', '.join(STORE_TYPES)}")
        options["store_type"] = st
    if "serializer" in options and isinstance(options["serializer"], str):
        ser = options["serializer"].strip().lower()
        if ser not in SERIALIZERS:
            name, where = src("serializer")
            raise _bad(name, options["serializer"], where, f"one of {', '.join(SERIALIZERS)}")
        options["serializer"] = ser
    if "port" in options:
        name, where = src("port")
        options["port"] = _int(name, options["port"], where, 1, 65535)
    if "db" in options:
        name, where = src("db")
        options["db"] = _int(name, options["db"], where, 0, 1_000_000)
    if options.get("default_ttl") not in (None, ""):
        name, where = src("default_ttl")
        value = options["default_ttl"]
        try:
            number = float(value) if isinstance(value, str) else value
            options["default_ttl"] = ttl_seconds(number, name)
        except (TypeError, ValueError):
            raise _bad(name, value, where, "a positive number of seconds") from None
    elif "default_ttl" in options:
        options["default_ttl"] = None
    if "key_prefix" in options and not isinstance(options["key_prefix"], str):
        name, where = src("key_prefix")
        raise _bad(name, options["key_prefix"], where, "a string")
    return options


def store_options_from_env(env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Options set by ``USAGELEDGER_KV_*`` variables (empty ones are ignored) and where each
    came from."""
    options, sources = resolve(_ENV_OF, {}, env=env, env_names=_env_names)
    return options, {k: sources[k] for k in options}


def create_store(
    store_type: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    ini_manager: IniManager | None = None,
    **options: Any,
) -> KVStore:
    """A store of ``store_type`` ("memory", "sqlite" (default), "redis"). Arguments win over
    the INI file's ``[kv]`` section, which wins over ``USAGELEDGER_KV_*`` variables, which
    win over defaults. Options: ``key_prefix`` (default ``"usageledger:"``), ``serializer``,
    ``allow_pickle``, ``default_ttl``; sqlite: ``path``, ``sweep_interval``; redis: ``host``,
    ``port``, ``db``, ``password``, ``url``, ``max_connections``, ``socket_timeout``,
    ``connect_timeout``, ``retries``."""
    if store_type is not None:
        options["store_type"] = store_type
    if ini_manager is None:
        ini_manager = IniManager(IniManager.resolve_path(env=env))
    names = [*_ENV_OF, *(k for k in options if k not in _ENV_OF)]
    merged, sources = resolve(names, options, env=env, env_names=_env_names, ini=ini_manager,
                              section=INI_SECTION)
    merged.setdefault("key_prefix", DEFAULT_KEY_PREFIX)
    _validate(merged, sources)
    kind = merged.pop("store_type", "sqlite")
    # settings of the other backends (e.g. REDIS_HOST set while TYPE=sqlite) are ignored
    redis_only = {"host", "port", "db", "password", "url", "max_connections", "socket_timeout",
                  "connect_timeout", "retries"}
    sqlite_only = {"path", "busy_timeout_ms"}
    # (settings read from the INI file or the environment; those given as arguments are not)
    env_set = {k for k, s in sources.items() if s not in ("argument", "default")}
    if kind == "memory":
        from .memory import MemoryKVStore

        return MemoryKVStore(**_drop(merged, (redis_only | sqlite_only) & env_set))
    if kind == "sqlite":
        from .sqlite import SqliteKVStore

        merged = _drop(merged, redis_only & env_set)
        path = merged.pop("path", None) or default_sqlite_path()
        return SqliteKVStore(path, **merged)
    from .redis_store import RedisKVStore

    return RedisKVStore(**_drop(merged, sqlite_only & env_set))


def _drop(options: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in names}


_global_store: KVStore | None = None


def configure_global_store(store_type: str | None = None, **options: Any) -> KVStore:
    """Create the default store (see :func:`create_store`) and make it the one
    :func:`get_global_store` returns. The previous default, if any, is replaced but not
    closed (it may still be in use)."""
    global _global_store
    _global_store = create_store(store_type, **options)
    return _global_store


def set_global_store(store: KVStore | None) -> None:
    """Install an existing store (or ``None``) as the default."""
    global _global_store
    _global_store = store


def get_global_store() -> KVStore:
    """The default store; created from the environment on first use if none was configured."""
    global _global_store
    if _global_store is None:
        _global_store = create_store()
    return _global_store


async def reset_global_store() -> None:
    """Close and forget the default store."""
    global _global_store
    store, _global_store = _global_store, None
    if store is not None:
        await store.close()
