"""Every default location of usageledger, in one place (platformdirs).

A path a user gives always wins; these are only the defaults. Each function returns a new
``Path`` and creates nothing: the component that writes there makes the folder.

=================================  ==============================================  ==========================
what                               default                                         used by
=================================  ==============================================  ==========================
INI file (``[tracker]`` section)   ``<config dir>/usageledger.ini``                 settings resolver
delivery journal                   ``<data dir>/queue.db``                          PersistentDelivery
other journals and stores          ``<data dir>/<name>``                            Meter, storage, collector
telemetry base dir                 ``<data dir>/telemetry``                         TelemetryClient
KV SQLite file                     ``<data dir>/kv.sqlite3``                        KV stores
summary file                       ``<data dir>/usage_summary.json``                UsageTracker
summary backup copies              ``<data dir>/summary-backup``                    UsageTracker
summary emergency copies           ``<cache dir>/emergency``                        UsageTracker
fallback journals                  ``<cache dir>/fallback``                         Recorder
=================================  ==============================================  ==========================

``<data dir>`` is ``platformdirs.user_data_dir("usageledger")`` (``~/.local/share/usageledger``
on Linux), ``<cache dir>`` and ``<config dir>`` likewise.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

__all__ = [
    "APP", "data_dir", "cache_dir", "config_dir", "data_file", "ini_file", "delivery_journal",
    "telemetry_dir", "kv_sqlite_file", "summary_file", "summary_backup_dir", "emergency_dir",
    "fallback_dir",
]

APP = "usageledger"


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP))


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP))


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP))


def data_file(name: str) -> Path:
    """A file of ours in the user data dir (journals and stores named by their users)."""
    return data_dir() / name


def ini_file() -> Path:
    return config_dir() / "usageledger.ini"


def delivery_journal() -> Path:
    return data_file("queue.db")


def telemetry_dir() -> Path:
    return data_dir() / "telemetry"


def kv_sqlite_file() -> Path:
    return data_file("kv.sqlite3")


def summary_file() -> Path:
    return data_file("usage_summary.json")


def summary_backup_dir() -> Path:
    return data_dir() / "summary-backup"


def emergency_dir() -> Path:
    return cache_dir() / "emergency"


def fallback_dir() -> Path:
    return cache_dir() / "fallback"
