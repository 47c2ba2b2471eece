"""The errors Memoir raises, and the reply codes of the wire protocol.

A command either succeeds or fails with a `CommandError` whose `code` is one of
`ErrorCode`: the same codes travel over NATS, so a client in any language can
branch on them. Journal errors are separate: they describe storage, and the
runtime translates them into command errors at the actor boundary.
"""

from __future__ import annotations

import enum
from typing import Any


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


class CommandError(MemoirError):
    """A command was not carried out; nothing it decided was persisted."""

    def __init__(self, code: ErrorCode | str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"CommandError({str(self.code)!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class JournalError(MemoirError):
    """Storage failed or returned something that cannot be trusted."""


class ConcurrencyConflict(JournalError):
    """The entity's highest seq was not the one the writer expected: someone else wrote first."""

    def __init__(self, entity_type: str, entity_id: str, expected_seq: int, actual_seq: int | None = None) -> None:
        actual = "" if actual_seq is None else f", found {actual_seq}"
        super().__init__(f"{entity_type}/{entity_id}: expected seq {expected_seq}{actual}")
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq


class JournalUnavailable(JournalError):
    """Storage cannot be reached or cannot take writes now (connection lost, disk full); retryable.

    Whether a write that failed this way landed is unknown to the writer: the caller retries
    with the same command id, and the journal's command-id check makes the retry safe.
    `reason` is short and names the fault for an operator: "storage full", "connection lost", ….
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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


class ConfigError(MemoirError):
    """A configuration value (URL, option, entity class) is wrong; the message names it."""


# Typed command errors, one per wire code, so callers can `except Rejected:`.
class Invalid(CommandError):
    """The payload, an id or a header was malformed; the message names the field. Fix the request; do not retry it."""


class Rejected(CommandError):
    """The entity refused the command (its handler returned an error). Nothing was stored."""


class UnknownCommand(CommandError):
    """The entity type has no command of that name."""


class UnknownEntityType(CommandError):
    """No entity type of that name is hosted by the runtime that answered."""


class Conflict(CommandError):
    """Another writer appended to the entity first; retry with the same command id."""


class Overloaded(CommandError):
    """Back-pressure: a full mailbox or queue, or the command waited past its sender's timeout. Retry later."""


class Unavailable(CommandError):
    """Storage is unreachable or full; retry later with the same command id (it may have been stored)."""


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


class ForgottenError(CommandError):
    """The entity was forgotten (its data key destroyed, crypto-shredding); it takes no more commands."""


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
    ErrorCode.FORGOTTEN: ForgottenError,
}


def command_error(code: str, message: str, details: Any = None) -> CommandError:
    """The typed CommandError for a wire code (a plain CommandError for codes this version does not know)."""
    return _TYPED.get(code, CommandError)(code, message, details)
