"""One exception root: every error class usageledger defines derives from
``usageledger.UsageLedgerError``, and keeps the built-in base callers rely on."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import usageledger
from usageledger import MixedCurrencyError, UsageLedgerError


def _defined_exceptions() -> list[type[BaseException]]:
    """Every exception class defined at module level anywhere in the package (each module
    imported, so none is missed because nothing imported it yet). Warnings are Exception
    subclasses too, but they are not errors: they are left out."""
    found = []
    for info in pkgutil.walk_packages(usageledger.__path__, "usageledger."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module.__name__
                    and not issubclass(obj, Warning)):
                found.append(obj)
    return found


def test_every_error_class_of_the_package_derives_from_the_root():
    found = _defined_exceptions()
    names = {f"{c.__module__}.{c.__qualname__}" for c in found}
    # the walk really sees the package's errors (a broken walk would pass vacuously)
    assert {"usageledger.core.settings.ConfigError", "usageledger.core.journal.base.JournalError",
            "usageledger.kv.base.KVUnavailableError", "usageledger.server.wire.BodyError"} <= names
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in found
                     if not issubclass(c, UsageLedgerError))
    assert outside == [], f"error classes outside UsageLedgerError: {outside}"


def test_builtin_bases_are_kept():
    from usageledger.config import ConfigError
    from usageledger.kv.base import (
        KVConfigError,
        KVSerializationError,
        KVTypeError,
        KVUnavailableError,
    )
    from usageledger.sinks.summary import CorruptSummary

    for cls, builtin in [(ConfigError, ValueError), (KVUnavailableError, ConnectionError),
                         (KVTypeError, TypeError), (KVSerializationError, ValueError),
                         (KVConfigError, ValueError), (CorruptSummary, ValueError),
                         (MixedCurrencyError, ValueError)]:
        assert issubclass(cls, UsageLedgerError) and issubclass(cls, builtin), cls
    assert usageledger.UsageLedgerError is UsageLedgerError and "UsageLedgerError" in usageledger.__all__
