"""Journals: where accepted records wait until a sink has them."""

from .base import DEAD, INFLIGHT, READY, Journal, JournalError, JournalItem
from .memory import MemoryJournal
from .sqlite import SqliteJournal

__all__ = ["Journal", "JournalItem", "JournalError", "MemoryJournal", "SqliteJournal", "READY", "INFLIGHT", "DEAD"]
