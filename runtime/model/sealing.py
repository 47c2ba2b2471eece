"""Sealed payloads: AES-256-GCM under a per-entity data key (crypto-shredding).

An entity type declared `encrypted=True` never lets a readable payload leave the
process: each event's payload, each snapshot and each stored reply is sealed with
the entity's data key before it reaches the journal, so the journal, the JetStream
streams and exports only ever hold ciphertext. Destroying the key ("forgetting" the
entity) leaves every seq, position, event name and time where it was and makes the
payloads unreadable everywhere at once, copies and backups included.

A sealed payload is a frame that JSON can never start with:

    0x00 | format (0x01) | nonce (12 random bytes) | AES-GCM ciphertext and 16-byte tag

The associated data binds the frame to where it belongs (what, entity type, id, seq,
and for events the stored name and version), so ciphertext moved to another event,
another entity or another field fails its tag check instead of decrypting. A reply
travels in a header of the JetStream journal, so it is sealed as text: `!` followed
by the frame in base64url.
"""

from __future__ import annotations

import base64
import functools
import os
import threading
from typing import TYPE_CHECKING, TypeAlias

import msgspec

from .errors import SealError
from .events import event

MAGIC = b"\x00"
FORMAT = 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, fresh per payload: a data key seals far fewer than 2^32 payloads
_HEADER = len(MAGIC) + 1 + NONCE_BYTES
_TAG_BYTES = 16
_TEXT = b"!"

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SealKey: TypeAlias = "bytes | AESGCM"
"""A data key: its 32 bytes, or (what the key ring hands out) the AES-GCM object built from them once."""


@functools.cache
def _aesgcm() -> type[AESGCM]:
    """cryptography is imported on first use: an app with no encrypted entity type never loads it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM


def cipher(key: SealKey) -> AESGCM:
    return _aesgcm()(key) if isinstance(key, bytes) else key


@event(name="memoir.Forgotten")
class Forgotten(msgspec.Struct):
    """The last event of a forgotten entity, stored in the clear: how views and consumers learn of it.

    It arrives in order, after the entity's other events, and is applied exactly once with a
    view's checkpoint, so a view can drop what it holds of the entity (`@on` a handler for it);
    a view that does not handle it keeps its rows until rebuilt.
    """


def new_key() -> bytes:
    return _aesgcm().generate_key(bit_length=KEY_BYTES * 8)


def is_sealed(data: bytes | None) -> bool:
    """Whether stored bytes are a sealed frame (JSON never starts with a NUL byte)."""
    return bool(data) and data[:1] == MAGIC  # type: ignore[index]


def is_sealed_text(data: bytes | None) -> bool:
    return bool(data) and data[:1] == _TEXT  # type: ignore[index]


def event_aad(entity_type: str, entity_id: str, seq: int, name: str, version: int) -> bytes:
    return _aad("event", entity_type, entity_id, str(seq), name, str(version))


def snapshot_aad(entity_type: str, entity_id: str, seq: int) -> bytes:
    return _aad("snapshot", entity_type, entity_id, str(seq))


def reply_aad(entity_type: str, entity_id: str, seq: int) -> bytes:
    return _aad("reply", entity_type, entity_id, str(seq))


def key_aad(entity_type: str, entity_id: str) -> bytes:
    """For a data key wrapped by the master key: a wrapped key cannot be moved to another entity."""
    return _aad("data-key", entity_type, entity_id)


def _aad(*parts: str) -> bytes:
    # NUL cannot occur in an entity type, an id that passed check_entity_id, or a number: unambiguous
    return b"memoir/1\x00" + "\x00".join(parts).encode()


class _Nonces:
    """Random nonces from a pool filled by os.urandom 4096 at a time: one syscall per 4096 seals.

    A forked child starts with an empty pool, so parent and child never share a nonce.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._lock = threading.Lock()  # two threads must never take the same slice
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pool, self._at = b"", 0
        self._lock = threading.Lock()

    def take(self) -> bytes:
        with self._lock:
            if self._at + NONCE_BYTES > len(self._pool):
                self._pool, self._at = os.urandom(NONCE_BYTES * 4096), 0
            nonce = self._pool[self._at : self._at + NONCE_BYTES]
            self._at += NONCE_BYTES
            return nonce


_nonces = _Nonces()


def seal(key: SealKey, plaintext: bytes, aad: bytes) -> bytes:
    nonce = _nonces.take()
    return MAGIC + bytes([FORMAT]) + nonce + cipher(key).encrypt(nonce, plaintext, aad)


def unseal(key: SealKey, frame: bytes, aad: bytes, what: str) -> bytes:
    """The plaintext of a frame; `what` names the payload in the error ("event inventory/A/3")."""
    if not is_sealed(frame) or len(frame) < _HEADER + _TAG_BYTES:
        raise SealError(f"{what}: not a sealed payload ({len(frame)} bytes)")
    if frame[1] != FORMAT:
        raise SealError(f"{what}: sealed with format {frame[1]}, this Memoir reads format {FORMAT}")
    from cryptography.exceptions import InvalidTag  # loaded with the cipher, so no cost here

    try:
        return cipher(key).decrypt(frame[2:_HEADER], frame[_HEADER:], aad)
    except InvalidTag:
        raise SealError(f"{what}: the sealed payload fails its integrity check (tampered or moved)") from None


def seal_text(key: SealKey, plaintext: bytes, aad: bytes) -> bytes:
    return _TEXT + base64.urlsafe_b64encode(seal(key, plaintext, aad))


def unseal_text(key: SealKey, text: bytes, aad: bytes, what: str) -> bytes:
    try:
        frame = base64.urlsafe_b64decode(text[1:])
    except ValueError:
        raise SealError(f"{what}: the sealed text is not base64") from None
    return unseal(key, frame, aad, what)
