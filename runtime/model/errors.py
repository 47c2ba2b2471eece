"""The errors Memoir raises, and the reply codes of the wire protocol.

Every error an app or an embedder can catch lives here, one class per idea (`memoir run` and
the CLI keep the few that only they raise):

    MemoirError
    ├── CommandError            a command was not carried out; `code` is one of ErrorCode
    │   ├── Invalid             invalid               the request is malformed: fix it, do not retry
    │   ├── Rejected            rejected              the entity said no
    │   ├── UnknownCommand      unknown_command
    │   ├── UnknownEntityType   unknown_entity_type
    │   ├── Conflict *          conflict              another writer appended first: retry
    │   ├── Overloaded          overloaded            back-pressure: retry later
    │   ├── Moved               overloaded            the entity's shard moved; the NATS door reroutes it
    │   ├── Unavailable *       unavailable           storage unreachable or full: retry later
    │   ├── InternalError       internal              a bug, or storage failing in a way that needs an operator
    │   ├── Unauthorized        unauthorized          no verified caller
    │   ├── Forbidden           forbidden             a verified caller the access rules refuse
    │   └── EntityForgotten     forgotten             its data key is destroyed: it takes no more commands
    ├── JournalError            storage failed or returned something that cannot be trusted
    │   ├── Conflict *
    │   ├── Unavailable *
    │   ├── DuplicateCommand    the command id was applied before: answer the repeat as the first time
    │   ├── EntityDeleted       the entity was deleted (tombstoned) and takes no more events
    │   └── EventDecodeError    a stored event does not decode into its class
    ├── SealError               a sealed payload does not open (tampered, moved, another key)
    └── ConfigError             a configuration value is wrong; the message names it

The codes travel over NATS and HTTP, so a client in any language can branch on them, and
a Python client gets the same classes back (`except Conflict:`). A conflict and an outage (*)
are both kinds at once: the journal raises them, and a sender gets the same class back.
"""

from __future__ import annotations

import enum
from typing import Any, Self


class ErrorCode(enum.StrEnum):
    """The `code` of an error reply: stable strings a client in any language branches on."""

    INVALID = "invalid"  # bad payload: the message names the field
    REJECTED = "rejected"  # the entity said no
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_ENTITY_TYPE = "unknown_entity_type"
    CONFLICT = "conflict"  # another writer appended first; safe to retry with the same command id
    OVERLOADED = "overloaded"  # the mailbox is full: back-pressure, retry later
    UNAVAILABLE = "unavailable"  # storage unreachable or full: retry later with the same command id
    INTERNAL = "internal"  # a handler raised or storage failed; nothing was persisted
    UNAUTHORIZED = "unauthorized"  # no bearer token where one is needed, or a bad one: the message says what
    FORBIDDEN = "forbidden"  # a verified caller the access rules do not allow
    FORGOTTEN = "forgotten"  # the entity was forgotten (its data key destroyed): it takes no more commands


class MemoirError(Exception):
    """Base of every error Memoir raises on purpose."""


class ConfigError(MemoirError):
    """A configuration value (URL, option, entity class) is wrong; the message names it."""


class SealError(MemoirError):
    """A sealed payload does not open: tampered, truncated, moved, or sealed under another key."""


class CommandError(MemoirError):
    """A command was not carried out; nothing it decided was persisted."""

    def __init__(self, code: ErrorCode | str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        self.message = message
        self.details = details

    @classmethod
    def from_reply(cls, code: ErrorCode | str, message: str, details: Any = None) -> Self:
        """The error an error reply describes: typed errors with constructors of their own come back too."""
        error = cls.__new__(cls)
        CommandError.__init__(error, code, message, details)
        return error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.code)!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class JournalError(MemoirError):
    """Storage failed or returned something that cannot be trusted."""


# Typed command errors, one per wire code, so callers can `except Rejected:`.
class Invalid(CommandError):
    """The payload, an id or a header was malformed; the message names the field. Fix the request; do not retry it."""


class Rejected(CommandError):
    """The entity refused the command (its handler returned an error). Nothing was stored."""


class UnknownCommand(CommandError):
    """The entity type has no command of that name."""


class UnknownEntityType(CommandError):
    """No entity type of that name is hosted by the runtime that answered."""


class Conflict(CommandError, JournalError):
    """Another writer appended to the entity first; nothing was stored: retry with the same command id.

    The journal raises it when the entity's highest seq is not `expected_seq`; `actual_seq` is the one
    it found, if known. From an error reply, the entity and the seqs are in the message only (None here).
    """

    entity_type: str | None = None
    entity_id: str | None = None
    expected_seq: int | None = None
    actual_seq: int | None = None

    def __init__(self, entity_type: str, entity_id: str, expected_seq: int, actual_seq: int | None = None) -> None:
        actual = "" if actual_seq is None else f", found {actual_seq}"
        super().__init__(ErrorCode.CONFLICT, f"{entity_type}/{entity_id}: expected seq {expected_seq}{actual}")
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq


class Overloaded(CommandError):
    """Back-pressure: a full mailbox or queue, or the command waited past its sender's timeout. Retry later."""


class Unavailable(CommandError, JournalError):
    """Storage cannot be reached or cannot take writes now (connection lost, disk full); retry later.

    Whether a write that failed this way landed is unknown to the writer: the caller retries
    with the same command id, and the journal's command-id check makes the retry safe.
    `reason` is short and names the fault for an operator: "storage full", "connection lost", …;
    it travels in the reply's details.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(ErrorCode.UNAVAILABLE, f"{reason}: {detail}" if detail else reason, {"reason": reason})
        self.reason = reason

    @classmethod
    def from_reply(cls, code: ErrorCode | str, message: str, details: Any = None) -> Self:
        error = super().from_reply(code, message, details)
        reason = details.get("reason") if isinstance(details, dict) else None
        error.reason = reason if isinstance(reason, str) else str(code)
        return error


class Moved(CommandError):
    """The entity is served by another process now (its shard moved); the NATS door routes it there.

    A client sees it only if routing gave up, as `overloaded`: retry.
    """

    def __init__(self, entity_type: str, entity_id: str) -> None:
        super().__init__(ErrorCode.OVERLOADED, f"{entity_type}/{entity_id} is moving to another process; retry")
        self.entity_type = entity_type
        self.entity_id = entity_id


class Unauthorized(CommandError):
    """No verified caller: a token was needed and missing, or it failed verification (the message says how)."""


class Forbidden(CommandError):
    """The caller is verified but the access rules do not let it send this command."""


class InternalError(CommandError):
    """A handler raised or storage failed in a way that is a bug or needs an operator; nothing was stored."""


class EntityForgotten(CommandError):
    """The entity was forgotten (its data key destroyed, crypto-shredding): its payloads are unreadable
    and it takes no more commands. From an error reply, the entity is in the message only (None here)."""

    entity_type: str | None = None
    entity_id: str | None = None

    def __init__(self, entity_type: str, entity_id: str) -> None:
        super().__init__(ErrorCode.FORGOTTEN, f"{entity_type}/{entity_id} was forgotten: its data key is destroyed")
        self.entity_type = entity_type
        self.entity_id = entity_id


class DuplicateCommand(JournalError):
    """The entity already stored events for this command id: the append stored nothing.

    `seq` is the seq of that command's last event and `reply` its encoded reply, so the
    caller answers the repeat exactly as it answered the first time.
    """

    def __init__(self, entity_type: str, entity_id: str, command_id: str, seq: int, reply: bytes | None) -> None:
        super().__init__(f"{entity_type}/{entity_id}: command id {command_id!r} was already applied at seq {seq}")
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.command_id = command_id
        self.seq = seq
        self.reply = reply


class EntityDeleted(JournalError):
    """The entity was deleted (tombstoned) and takes no more events."""

    def __init__(self, entity_type: str, entity_id: str) -> None:
        super().__init__(f"{entity_type}/{entity_id} was deleted")
        self.entity_type = entity_type
        self.entity_id = entity_id


class EventDecodeError(JournalError):
    """A stored event could not be decoded into its class; names the entity and seq."""

    def __init__(self, entity_type: str, entity_id: str, seq: int, reason: str) -> None:
        super().__init__(f"cannot decode event {entity_type}/{entity_id} seq {seq}: {reason}")
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.seq = seq
        self.reason = reason


_TYPED: dict[str, type[CommandError]] = {
    ErrorCode.INVALID: Invalid,
    ErrorCode.REJECTED: Rejected,
    ErrorCode.UNKNOWN_COMMAND: UnknownCommand,
    ErrorCode.UNKNOWN_ENTITY_TYPE: UnknownEntityType,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.FORGOTTEN: EntityForgotten,
}


def command_error(code: str, message: str, details: Any = None) -> CommandError:
    """The typed CommandError for a wire code (a plain CommandError for codes this version does not know)."""
    return _TYPED.get(code, CommandError).from_reply(code, message, details)
