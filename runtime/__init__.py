"""Memoir: event-sourced entities as async actors, with their events on NATS JetStream.

The package is layered, and the data path reads in layer order:
`model` (entities, effects, events: what users write) → `wire` (the NATS protocol) →
`journal` (group-committed, optimistic append) → `engine` (actors, one command at a
time; the runtime routes, activates and passivates) → `streams` (the outbox publisher,
views, consumers) → `serve` (the service, the NATS door and client, `memoir run`).
A module imports only from its own layer or the ones below; CI checks it.

Everything an app author writes is importable from here; the plumbing stays in its own
module (`runtime.serve.service` for the embedded NATS server and the HTTP gateway,
`runtime.streams.publisher`, `runtime.serve.process.tuning`, …) and the testkits live in
`runtime.testing`.
"""

import importlib
import warnings

from .engine.history import HistoryItem, history, state_at
from .engine.runtime import Runtime
from .journal import Journal, MemoryJournal, SqliteJournal, open_journal
from .model.access import Anyone, Authenticated, Caller, Claim, Nobody, Policy, Rule
from .model.app import App
from .model.effect import Effect
from .model.entity import EventSourcedEntity, applies, command, model_of
from .model.envelope import Envelope, Snapshot
from .model.errors import (
    CommandError,
    ConfigError,
    Conflict,
    DuplicateCommand,
    EntityDeleted,
    EntityForgotten,
    ErrorCode,
    EventDecodeError,
    Forbidden,
    InternalError,
    Invalid,
    JournalError,
    MemoirError,
    Overloaded,
    Rejected,
    SealError,
    Unauthorized,
    Unavailable,
    UnknownCommand,
    UnknownEntityType,
)
from .model.events import event
from .model.kv_entity import KeyValueEntity, StateDeleted, StateSet
from .model.sealing import Forgotten
from .model.workflow import Calls, Recovery, Run, StepEffect, Workflow, WorkflowSettings, WorkflowStatus, step
from .serve.service._service import Service
from .serve.service.auth import VerificationKey, Verifier, load_verifier
from .serve.service.client import Client
from .streams.consumer import Consumer, Context
from .streams.handlers import on
from .streams.view import Rows, View, ViewQuery
from .streams.view_store import MemoryViewStore, PostgresViewStore, SqliteViewStore, ViewStore, open_view_store
from .wire.auth import NatsAuth
from .wire.protocol import Reply

__all__ = [
    "Anyone",
    "App",
    "Authenticated",
    "Caller",
    "Calls",
    "Claim",
    "Client",
    "CommandError",
    "ConfigError",
    "Conflict",
    "Consumer",
    "Context",
    "DuplicateCommand",
    "Effect",
    "EntityDeleted",
    "EntityForgotten",
    "Envelope",
    "ErrorCode",
    "EventDecodeError",
    "EventSourcedEntity",
    "Forbidden",
    "Forgotten",
    "HistoryItem",
    "InternalError",
    "Invalid",
    "Journal",
    "JournalError",
    "KeyValueEntity",
    "MemoirError",
    "MemoryJournal",
    "MemoryViewStore",
    "NatsAuth",
    "Nobody",
    "Overloaded",
    "Policy",
    "PostgresViewStore",
    "Recovery",
    "Rejected",
    "Reply",
    "Rows",
    "Rule",
    "Run",
    "Runtime",
    "SealError",
    "Service",
    "Snapshot",
    "SqliteJournal",
    "SqliteViewStore",
    "StateDeleted",
    "StateSet",
    "StepEffect",
    "Unauthorized",
    "Unavailable",
    "UnknownCommand",
    "UnknownEntityType",
    "VerificationKey",
    "Verifier",
    "View",
    "ViewQuery",
    "ViewStore",
    "Workflow",
    "WorkflowSettings",
    "WorkflowStatus",
    "applies",
    "command",
    "event",
    "history",
    "load_verifier",
    "model_of",
    "on",
    "open_journal",
    "open_view_store",
    "state_at",
    "step",
]

# One public home for every name, as httpx does: reprs, docs and tracebacks say `runtime.X`,
# and moving a module between layers never changes what users see.
for _name in __all__:
    globals()[_name].__module__ = "runtime"
del _name

# Names this package exported before, and where each lives now: still importable from here,
# with a DeprecationWarning. The module is imported on first use, so `import runtime` never
# loads the testing layer.
_MOVED: dict[str, tuple[str, str]] = {
    # one name per idea: the journal's and the client's error are one class
    "ConcurrencyConflict": ("runtime", "Conflict"),
    "JournalUnavailable": ("runtime", "Unavailable"),
    "ForgottenError": ("runtime", "EntityForgotten"),
    # plumbing, importable from its own namespace
    "EmbeddedNats": ("runtime.serve.service", "EmbeddedNats"),
    "HttpGateway": ("runtime.serve.service", "HttpGateway"),
    "KeyRing": ("runtime.engine.keyring", "KeyRing"),
    "KeyStore": ("runtime.journal.keys", "KeyStore"),
    "Publisher": ("runtime.streams.publisher", "Publisher"),
    "StreamSettings": ("runtime.streams.publisher", "StreamSettings"),
    "redact_url": ("runtime.wire.redact", "redact_url"),
    "tune_gc": ("runtime.serve.process.tuning", "tune_gc"),
    "tune_nats": ("runtime.serve.process.tuning", "tune_nats"),
    # test helpers, in runtime.testing as trio.testing
    "ConsumerTestKit": ("runtime.testing", "ConsumerTestKit"),
    "EntityTestKit": ("runtime.testing", "EntityTestKit"),
    "SentCommand": ("runtime.testing", "SentCommand"),
    "ViewTestKit": ("runtime.testing", "ViewTestKit"),
    "caught_up": ("runtime.testing", "caught_up"),
}


def __getattr__(name: str) -> object:
    """A deprecated name: warns, naming its new home, and returns the very same object."""
    moved = _MOVED.get(name)
    if moved is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    module, new = moved
    warnings.warn(
        f"runtime.{name} is deprecated: use {module}.{new} (`from {module} import {new}`)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), new)
