"""Memoir: event-sourced entities as async actors, with their events on NATS JetStream.

The data path, in import order: `entity` (what users write) → `actor` (one
command at a time) → `journal` (group-committed, optimistic append) →
`runtime` (routing, activation, passivation).
"""

from .actor import Reply
from .app import App
from .effect import Effect
from .entity import EventSourcedEntity, applies, command, model_of
from .envelope import Envelope, Snapshot
from .errors import (
    CommandError,
    ConcurrencyConflict,
    ConfigError,
    EntityDeleted,
    ErrorCode,
    EventDecodeError,
    JournalError,
    MemoirError,
)
from .events import event
from .history import HistoryItem, history, state_at
from .journal import Journal, MemoryJournal, SqliteJournal, open_journal
from .runtime import Runtime

__all__ = [
    "App",
    "CommandError",
    "ConcurrencyConflict",
    "ConfigError",
    "Effect",
    "EntityDeleted",
    "Envelope",
    "ErrorCode",
    "EventDecodeError",
    "EventSourcedEntity",
    "HistoryItem",
    "Journal",
    "JournalError",
    "MemoirError",
    "MemoryJournal",
    "Reply",
    "Runtime",
    "Snapshot",
    "SqliteJournal",
    "applies",
    "command",
    "event",
    "history",
    "model_of",
    "open_journal",
    "state_at",
]
