"""Memoir: event-sourced entities as async actors, with their events on NATS JetStream.

The package is layered, and the data path reads in layer order:
`model` (entities, effects, events: what users write) → `wire` (the NATS protocol) →
`journal` (group-committed, optimistic append) → `engine` (actors, one command at a
time; the runtime routes, activates and passivates) → `streams` (the outbox publisher,
views, consumers) → `serve` (the service, the NATS transport and client, `memoir run`).
A module imports only from its own layer or the ones below; CI checks it.
Everything a user needs is importable from here.
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
    Conflict,
    DuplicateCommand,
    EntityDeleted,
    ErrorCode,
    EventDecodeError,
    InternalError,
    Invalid,
    JournalError,
    JournalUnavailable,
    MemoirError,
    Overloaded,
    Rejected,
    Unavailable,
    UnknownCommand,
    UnknownEntityType,
)
from .model.events import event
from .model.testkit import EntityTestKit
from .serve.client import Client
from .serve.nats_server import EmbeddedNats
from .serve.service import Service
from .serve.tuning import tune_gc, tune_nats
from .streams.consumer import Consumer, Context
from .streams.handlers import on
from .streams.publisher import Publisher, StreamSettings
from .streams.view import Rows, View, ViewQuery
from .streams.view_store import MemoryViewStore, PostgresViewStore, SqliteViewStore, ViewStore, open_view_store
from .wire.protocol import Reply

__all__ = [
    "App",
    "Client",
    "CommandError",
    "ConcurrencyConflict",
    "ConfigError",
    "Conflict",
    "Consumer",
    "Context",
    "DuplicateCommand",
    "Effect",
    "EmbeddedNats",
    "EntityDeleted",
    "EntityTestKit",
    "Envelope",
    "ErrorCode",
    "EventDecodeError",
    "EventSourcedEntity",
    "HistoryItem",
    "InternalError",
    "Invalid",
    "Journal",
    "JournalError",
    "JournalUnavailable",
    "MemoirError",
    "MemoryJournal",
    "MemoryViewStore",
    "Overloaded",
    "PostgresViewStore",
    "Publisher",
    "Rejected",
    "Reply",
    "Rows",
    "Runtime",
    "Service",
    "Snapshot",
    "SqliteJournal",
    "SqliteViewStore",
    "StreamSettings",
    "Unavailable",
    "UnknownCommand",
    "UnknownEntityType",
    "View",
    "ViewQuery",
    "ViewStore",
    "applies",
    "command",
    "event",
    "history",
    "model_of",
    "on",
    "open_journal",
    "open_view_store",
    "state_at",
    "tune_gc",
    "tune_nats",
]

# One public home for every name, as httpx does: reprs, docs and tracebacks say `runtime.X`,
# and moving a module between layers never changes what users see.
for _name in __all__:
    globals()[_name].__module__ = "runtime"
del _name
