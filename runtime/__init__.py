"""Memoir: event-sourced entities as async actors, with their events on NATS JetStream.

The data path, in import order: `entity` (what users write) → `actor` (one
command at a time) → `journal` (group-committed, optimistic append) →
`runtime` (routing, activation, passivation) → `publisher` (journal to
JetStream) → `view` / `consumer` (subscribers) — wired together by `service`,
served over NATS by `transport`, launched by `server` (`memoir run`).
"""

from .actor import Reply
from .app import App
from .client import Client
from .consumer import Consumer, Context
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
from .handlers import on
from .history import HistoryItem, history, state_at
from .journal import Journal, MemoryJournal, SqliteJournal, open_journal
from .nats_server import EmbeddedNats
from .publisher import Publisher, StreamSettings
from .runtime import Runtime
from .service import Service
from .tuning import tune_gc, tune_nats
from .view import Rows, View, ViewQuery

__all__ = [
    "App",
    "Client",
    "CommandError",
    "ConcurrencyConflict",
    "ConfigError",
    "Consumer",
    "Context",
    "Effect",
    "EmbeddedNats",
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
    "Publisher",
    "Reply",
    "Rows",
    "Runtime",
    "Service",
    "Snapshot",
    "SqliteJournal",
    "StreamSettings",
    "View",
    "ViewQuery",
    "applies",
    "command",
    "event",
    "history",
    "model_of",
    "on",
    "open_journal",
    "state_at",
    "tune_gc",
    "tune_nats",
]
