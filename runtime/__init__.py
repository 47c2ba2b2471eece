"""Memoir: event-sourced entities as async actors, with their events on NATS JetStream.

The package is layered, and the data path reads in layer order:
`model` (entities, effects, events: what users write) → `wire` (the NATS protocol) →
`journal` (group-committed, optimistic append) → `engine` (actors, one command at a
time; the runtime routes, activates and passivates) → `streams` (the outbox publisher,
views, consumers) → `serve` (the service, the NATS door and client, `memoir run`).
A module imports only from its own layer or the ones below; CI checks it.
Everything a user needs is importable from here.
"""

from .engine.history import HistoryItem, history, state_at
from .engine.keyring import KeyRing
from .engine.runtime import Runtime
from .journal import Journal, MemoryJournal, SqliteJournal, open_journal
from .journal.keys import KeyStore
from .model.access import Anyone, Authenticated, Caller, Claim, Nobody, Policy, Rule
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
    Forbidden,
    ForgottenError,
    InternalError,
    Invalid,
    JournalError,
    JournalUnavailable,
    MemoirError,
    Overloaded,
    Rejected,
    Unauthorized,
    Unavailable,
    UnknownCommand,
    UnknownEntityType,
)
from .model.events import event
from .model.sealing import EntityForgotten, Forgotten, SealError
from .model.testkit import EntityTestKit
from .model.workflow import Calls, Recovery, Run, StepEffect, Workflow, WorkflowSettings, WorkflowStatus, step
from .serve.process.tuning import tune_gc, tune_nats
from .serve.service._service import Service
from .serve.service.auth import VerificationKey, Verifier, load_verifier
from .serve.service.client import Client
from .serve.service.embedded_nats import EmbeddedNats
from .serve.service.http import HttpGateway
from .streams.consumer import Consumer, Context
from .streams.handlers import on
from .streams.publisher import Publisher, StreamSettings
from .streams.testkit import ConsumerTestKit, SentCommand, ViewTestKit
from .streams.view import Rows, View, ViewQuery
from .streams.view_store import MemoryViewStore, PostgresViewStore, SqliteViewStore, ViewStore, open_view_store
from .testing.waits import caught_up
from .wire.auth import NatsAuth
from .wire.protocol import Reply
from .wire.redact import redact_url

__all__ = [
    "Anyone",
    "App",
    "Authenticated",
    "Caller",
    "Calls",
    "Claim",
    "Client",
    "CommandError",
    "ConcurrencyConflict",
    "ConfigError",
    "Conflict",
    "Consumer",
    "ConsumerTestKit",
    "Context",
    "DuplicateCommand",
    "Effect",
    "EmbeddedNats",
    "EntityDeleted",
    "EntityForgotten",
    "EntityTestKit",
    "Envelope",
    "ErrorCode",
    "EventDecodeError",
    "EventSourcedEntity",
    "Forbidden",
    "Forgotten",
    "ForgottenError",
    "HistoryItem",
    "HttpGateway",
    "InternalError",
    "Invalid",
    "Journal",
    "JournalError",
    "JournalUnavailable",
    "KeyRing",
    "KeyStore",
    "MemoirError",
    "MemoryJournal",
    "MemoryViewStore",
    "NatsAuth",
    "Nobody",
    "Overloaded",
    "Policy",
    "PostgresViewStore",
    "Publisher",
    "Recovery",
    "Rejected",
    "Reply",
    "Rows",
    "Rule",
    "Run",
    "Runtime",
    "SealError",
    "SentCommand",
    "Service",
    "Snapshot",
    "SqliteJournal",
    "SqliteViewStore",
    "StepEffect",
    "StreamSettings",
    "Unauthorized",
    "Unavailable",
    "UnknownCommand",
    "UnknownEntityType",
    "VerificationKey",
    "Verifier",
    "View",
    "ViewQuery",
    "ViewStore",
    "ViewTestKit",
    "Workflow",
    "WorkflowSettings",
    "WorkflowStatus",
    "applies",
    "caught_up",
    "command",
    "event",
    "history",
    "load_verifier",
    "model_of",
    "on",
    "open_journal",
    "open_view_store",
    "redact_url",
    "state_at",
    "step",
    "tune_gc",
    "tune_nats",
]

# One public home for every name, as httpx does: reprs, docs and tracebacks say `runtime.X`,
# and moving a module between layers never changes what users see.
for _name in __all__:
    globals()[_name].__module__ = "runtime"
del _name
