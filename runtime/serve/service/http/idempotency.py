"""An `Idempotency-Key` names one request: reused with another body or command, it is 422 `key_reused`.

The NATS door dedupes by command id alone and answers a repeat with the first reply, whatever
its payload: right for a retry, silently wrong for a client that reused a key for another
request. So before a keyed command goes on, the gateway claims the key in a NATS KV bucket
(`{PREFIX}_HTTP_KEYS`, shared by every gateway of a cluster): the entry, written only if absent,
is a digest of the entity, key, command and JSON body (keys sorted, so spacing and field order
do not count). A repeat with the same digest goes on (and gets the first reply); another digest
is refused. Entries live `KEY_TTL_S` (a day): beyond that, a key is the door's to dedupe alone.
A claim whose command got a definite refusal is released, so a corrected retry may reuse the key.
"""

from __future__ import annotations

import hashlib

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ....model.errors import CommandError, ConfigError
from ....wire.protocol import stream_prefix

KEY_TTL_S = 86_400.0


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def _canonical(body: bytes) -> bytes:
    try:
        return msgspec.json.encode(msgspec.json.decode(body or b"{}"), order="sorted")
    except msgspec.DecodeError:
        return body  # not JSON: the NATS door refuses it; its bytes are the request


class IdempotencyKeys:
    """Claims keys in the KV bucket; `claim` is one round trip for a new key, two for a repeat."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, prefix: str, *, replicas: int = 1) -> IdempotencyKeys:
        bucket = f"{stream_prefix(prefix)}_HTTP_KEYS"
        try:
            try:
                kv = await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=bucket, history=1, ttl=KEY_TTL_S, replicas=replicas, storage=StorageType.FILE
                )
                kv = await js.create_key_value(config)  # a concurrent creator's identical config is accepted
        except nats.errors.Error as exc:  # permissions, no JetStream, a timeout: one line at start-up
            raise ConfigError(f"the HTTP gateway cannot open the NATS KV bucket {bucket}: {exc}") from None
        return cls(kv)

    async def claim(self, entity_type: str, entity_id: str, key: str, command: str, body: bytes) -> str | None:
        """Raise `key_reused` if the key was claimed for another request; the entry name if this claimed it."""
        name = _digest(entity_type.encode(), entity_id.encode(), key.encode())
        request = _digest(command.encode(), _canonical(body)).encode()
        for _ in range(2):  # the entry may expire between a failed create and the get
            try:
                await self.kv.create(name, request)
                return name
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value != request:
                raise CommandError(
                    "key_reused",
                    f"this Idempotency-Key was used for another request (another command or body) on"
                    f" {entity_type} {entity_id[:64]!r}; use a new key for a new request",
                )
            return None
        return None

    async def release(self, name: str) -> None:
        """Forget a claim (its command was refused, nothing stored): the key may carry another body."""
        await self.kv.purge(name)
