"""Old import paths of modules that moved into the package's folders.

Until the layout was grouped into folders, every module sat at the package's root
(`usageledger.dispatcher`, `usageledger.meter`, `usageledger.cli`...). Those paths are in
users' code and in our docs, so they keep working: importing an old path gives the very
same module object as the new one (not a copy), so attributes set on one are seen through
the other. One table, one finder, installed by the package's `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

# old path -> new path; a package's submodules follow it (old.x -> new.x)
MOVED: dict[str, str] = {
    "usageledger.records": "usageledger.schema.records",
    "usageledger.runs": "usageledger.schema.runs",
    "usageledger.eventtime": "usageledger.schema.eventtime",
    "usageledger.limits": "usageledger.schema.limits",
    "usageledger.totals": "usageledger.schema.totals",
    "usageledger.recorder": "usageledger.core.recorder",
    "usageledger.dispatcher": "usageledger.core.dispatcher",
    "usageledger.pipeline": "usageledger.core.pipeline",
    "usageledger.settings": "usageledger.core.settings",
    "usageledger.config": "usageledger.core.config",
    "usageledger.paths": "usageledger.core.paths",
    "usageledger.journal": "usageledger.core.journal",
    "usageledger._sqlite": "usageledger.core._sqlite",
    "usageledger._sqlite_salvage": "usageledger.core._sqlite_salvage",
    "usageledger._signals": "usageledger.core._signals",
    "usageledger._hooks": "usageledger.core._hooks",
    "usageledger._files": "usageledger.core._files",
    "usageledger.logs": "usageledger.core.logs",
    "usageledger.redact": "usageledger.core.redact",
    "usageledger.meter": "usageledger.facades.meter",
    "usageledger.tracker": "usageledger.facades.tracker",
    "usageledger.delivery": "usageledger.facades.delivery",
    "usageledger.summary_file": "usageledger.summary.document",
    "usageledger.summary_store": "usageledger.summary.store",
    "usageledger.pricing": "usageledger.prices.pricing",
    "usageledger.pricebook": "usageledger.prices.pricebook",
    "usageledger.reprice": "usageledger.prices.reprice",
    "usageledger.cli": "usageledger.commands.cli",
    "usageledger.cli_keys": "usageledger.commands.cli_keys",
    "usageledger.cli_prices": "usageledger.commands.cli_prices",
    "usageledger.cli_retention": "usageledger.commands.cli_retention",
    "usageledger.monitor": "usageledger.commands.monitor",
    "usageledger.report": "usageledger.commands.report",
    "usageledger.export": "usageledger.commands.export",
    "usageledger.demo": "usageledger.commands.demo",
    "usageledger.retention": "usageledger.storage.retention",
    "usageledger.sinks.base": "usageledger.core.sink",
}


def _target(fullname: str) -> str | None:
    if fullname in MOVED:
        return MOVED[fullname]
    head, _, tail = fullname.rpartition(".")
    while head:
        if head in MOVED:
            return f"{MOVED[head]}.{tail}"
        head, _, rest = head.rpartition(".")
        tail = f"{rest}.{tail}"
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target ran when it was imported; an alias runs nothing of its own."""

    def get_code(self, fullname: str):  # noqa: ANN201 - for `python -m <old path>`
        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - finder protocol
        # on sys.meta_path this is asked about every import of the process: answer other
        # packages' at once
        if not fullname.startswith("usageledger."):
            return None
        new = _target(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
