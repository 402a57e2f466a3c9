"""File helpers shared by the writers of local files (JSONL storage, NDJSON runs, the
summary file)."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked,
    e.g. on a full disk or a signal), then fsync: on return the bytes are on disk."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
