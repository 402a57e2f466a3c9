"""Journals: where accepted records wait until a sink has them."""

from .base import (
    DEAD,
    INFLIGHT,
    READY,
    Journal,
    JournalDestinationError,
    JournalError,
    JournalItem,
    JournalUnavailableError,
)
from .memory import MemoryJournal
from .sqlite import SqliteJournal

__all__ = ["Journal", "JournalItem", "JournalError", "JournalDestinationError", "JournalUnavailableError", "MemoryJournal", "SqliteJournal", "READY", "INFLIGHT", "DEAD"]
