"""What every command shares: opening a --storage URL the way reading commands must (never
creating an empty store in place of a missing or foreign file) and the two consoles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from ..storage.base import StorageBackend


def _storage(url: str, *, must_exist: bool) -> StorageBackend:
    """Open a storage URL. Reading commands refuse a file URL naming no file, rather than
    reporting on an empty store they just created."""
    from ..storage import _file_path, create_storage

    lowered = url.strip().lower()
    for scheme in ("sqlite", "jsonl"):
        if must_exist and lowered.startswith(f"{scheme}://"):
            path = Path(_file_path(url.strip(), scheme, {}, ()))
            if not path.exists():
                raise FileNotFoundError(f"no {scheme} store at {path} (from --storage {url})")
            if scheme == "sqlite":
                _check_sqlite_store(path, url)
    return create_storage(url)


def _check_sqlite_store(path: Path, url: str) -> None:
    """A file that is not an SQLite database at all is refused, read-only: opening it as
    storage would move it aside as damaged and start an empty store in its place."""
    import sqlite3

    from ..core._sqlite import read_tables

    try:
        read_tables(path)
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a database usageledger can read ({exc}; "
                         f"from --storage {url})") from None


def _out() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)
