"""Memoir: event-sourced entities as async actors, with their events on NATS JetStream.

The data path, in import order: `entity` (what users write) → `actor` (one
command at a time) → `journal` (group-committed, optimistic append) →
`runtime` (routing, activation, passivation) → `publisher` (journal to
JetStream) → `view` / `consumer` (subscribers) — wired together by `service`,
served over NATS by `transport`, launched by `server` (`memoir run`).
"""

from .engine.history import HistoryItem, history, state_at
from .engine.runtime import Runtime
from .journal import Journal, MemoryJournal, SqliteJournal, open_journal
from .model.app import App
from .model.effect import Effect
from .model.entity import EventSourcedEntity, applies, command, model_of
from .model.envelope import Envelope, Snapshot
from .model.errors import (
    CommandError,
    ConcurrencyConflict,
    ConfigError,
    EntityDeleted,
    ErrorCode,
    EventDecodeError,
    JournalError,
    MemoirError,
)
from .model.events import event
from .serve.client import Client
from .serve.nats_server import EmbeddedNats
from .serve.service import Service
from .serve.tuning import tune_gc, tune_nats
from .streams.consumer import Consumer, Context
from .streams.handlers import on
from .streams.publisher import Publisher, StreamSettings
from .streams.view import Rows, View, ViewQuery
from .wire.protocol import Reply

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
