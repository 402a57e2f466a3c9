"""Every name the README and docs/ tell users to import resolves.

The names are read from the documents themselves (dotted names such as
`usageledger.storage.create_storage` and `from usageledger.x import a, b` lines), so a page
that documents a name and a change that moves it away cannot disagree without this failing.
The package's folders may change; these paths are promises.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# file names that merely start with the package's name
FILE_SUFFIXES = {"ini", "db", "json", "jsonl", "log", "toml", "journal", "py"}
# the names users arrive with from the systems usageledger replaces; they must keep working
# even where a page does not spell them out
ARRIVAL_NAMES = [
    "usageledger:PersistentDelivery", "usageledger:TelemetryClient", "usageledger:Meter",
    "usageledger:UsageTracker", "usageledger.storage:create_storage",
    "usageledger.kv:PersistenceManager", "usageledger.kv:RetryManager",
    "usageledger.kv:StateTracker", "usageledger.delivery:PersistentQueueManager",
    "usageledger.delivery:DeliveryConfig",
]


def _documented_names() -> list[str]:
    names: set[str] = set()
    for doc in DOCUMENTS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"(?<![\w/.-])usageledger(?:\.[A-Za-z_]\w*)+", text):
            dotted = m.group(0)
            # logger names ("the `usageledger.capture` logger") are not imports
            logger = re.match(r"`? logger", text[m.end():])
            if dotted.rsplit(".", 1)[1] not in FILE_SUFFIXES and not logger:
                names.add(dotted)
        for m in re.finditer(r"^\s*from (usageledger[\w.]*) import ([^\n#]+)", text, re.M):
            for part in m.group(2).strip("() ").split(","):
                name = part.split(" as ")[0].strip()
                if name:
                    names.add(f"{m.group(1)}:{name}")
    return sorted(names)


def resolve(name: str) -> object:
    """`pkg.mod:attr` or a dotted path: the longest importable module, then attributes."""
    module_path, _, attr = name.partition(":")
    parts = module_path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for rest in parts[cut:] + ([attr] if attr else []):
            obj = getattr(obj, rest)
        return obj
    raise ModuleNotFoundError(name)


DOCUMENTED = _documented_names()


def test_the_documents_name_enough_to_be_checked():
    # a broken extraction would make the parametrized test below pass on nothing
    assert len(DOCUMENTED) >= 50
    assert "usageledger.storage.create_storage" in DOCUMENTED


@pytest.mark.parametrize("name", DOCUMENTED + ARRIVAL_NAMES)
def test_documented_name_resolves(name):
    assert resolve(name) is not None
