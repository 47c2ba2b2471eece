"""`nats://host:port?prefix=memoir`: JetStream itself as the journal.

The journal is one stream, `{PREFIX}_EVENTS`, on the subjects the outbox would publish to
(`{prefix}.events.{type}.{token(id)}`, same `Nats-Msg-Id` and `Memoir-*` headers), so
views, consumers and any plain subscriber read it the same way. The append is the
publish: no outbox runs, and the stream sequence is the position.

- Optimistic concurrency is the server's: an append carries
  `Nats-Expected-Last-Subject-Sequence`, the entity subject's last stream sequence,
  and the server refuses it with err_code 10071 if another writer got there first
  (a `Conflict`). A duplicate `Nats-Msg-Id` is accepted only if the stored
  message is this very write (a retry that already landed); otherwise it is a conflict.
- Command ids hold by JetStream's own dedupe: the last event of an append whose events
  carry a command id has `Nats-Msg-Id: {type}/{token(id)}/cmd:{token(command id)}` (the
  others keep `{type}/{token(id)}/{seq}`). Within the stream's duplicate window, the URL
  option `duplicate_window` in seconds (default 120, JetStream's own; `?duplicate_window=600`),
  the server stores a repeat not at all and names the first write, whose seq and reply
  `DuplicateCommand` carries; this holds across restarts of the server and of the runtime,
  and also when the first write was truncated since (then the reply is None and the seq the
  deletion floor). A repeat refused for a stale seq (the server checks that first) or inside
  an atomic batch (10201, which does not say which message) is looked up among the entity's
  stored events instead, as `find_command` does. Beyond the window, a repeat decided on the
  entity's current seq is stored again.
- A multi-event append is an atomic batch (stream `allow_atomic`, server >= 2.12):
  headers `Nats-Batch-Id`, `Nats-Batch-Sequence` 1..n and `Nats-Batch-Commit: 1` on the
  last; the server stores all or none and acks the commit (10201 names a batch that
  holds a duplicate message id). At most 1,000 events per append (the server's limit).
- Group commit, as on SQLite and PostgreSQL: the appends that arrive while one write is
  in flight go out together as one atomic batch across entities, each entity's first
  event carrying its own expected subject sequence. The server stores all or none and
  fsyncs once, which is what makes `sync_interval: always` affordable (a plain publish
  costs one fsync per event). If the server refuses the batch (one stale expectation, a
  duplicate id) it says not which append was at fault, so each is then written on its
  own and gets its own answer. Two group commits may be in flight at once, never with one
  entity in both (`PipelinedBatcher`): while the server writes one, the next is encoded and
  sent. A flush of only a few appends publishes them one by one,
  pipelined, each awaiting its own ack on a shared inbox (nats-py's publish_async would
  not report a refusal, nats.py #985): an atomic batch has a higher fixed cost.
- Snapshots live in a second stream (the latest 16 per entity), checkpoints, deletion
  floors and tombstones in KV buckets.

Connection loss: nats-py reconnects by itself (every 0.25 s); on the drop every append and
read waiting for the server fails at once with `Unavailable("connection lost")`, and
new ones fail fast until it is back (one warning, then one info in the log). Whether such
a write landed is unknown: the caller retries with its command id, which the dedupe above
makes safe.

Durability: JetStream fsyncs every `sync_interval` (2 minutes by default). An
acknowledged append then survives a crash of the server process but not of the
machine. For the journal run the server with `sync_interval: always` (the embedded
server's `sync="always"`), or replicate the stream (R3) on a cluster.
- On a NATS cluster, `?replicas=3` replicates the journal's streams and buckets (default 1).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit, urlunsplit

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyNotFoundError, NotFoundError, ServiceUnavailableError

from ..model.envelope import Envelope, Recovery, Snapshot
from ..model.errors import (
    ConfigError,
    Conflict,
    DuplicateCommand,
    EntityDeleted,
    JournalError,
    MemoirError,
    Unavailable,
)
from ..wire.auth import NatsAuth
from ..wire.frames import Message
from ..wire.nats import AckInbox, PublishError, close_quietly, connect, decode_ack, ensure_stream, watch
from ..wire.protocol import (
    H_COMMAND_ID,
    H_MSG_ID,
    H_POSITION,
    H_RECORDED,
    H_SEQ,
    check_prefix,
    envelope_from_message,
    event_headers,
    event_subject,
    stream_prefix,
    token,
    untoken,
)
from ..wire.redact import redact_url
from ._batching import PipelinedBatcher
from .base import Journal, check_batch
from .jetstream_keys import KvKeyStore, kv_key
from .keys import KeyStore

Key = tuple[str, str]
MAX_BATCH = 1000  # events in one atomic batch: the server's `max_msgs` default
ATOMIC_FROM = 16  # appends in one flush from which one atomic batch beats pipelined publishes
IN_FLIGHT = 2  # group commits written at once, no entity in two of them (see `PipelinedBatcher`)
H_REPLY = "Memoir-Reply"
H_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_BATCH_ID = "Nats-Batch-Id"
H_BATCH_SEQ = "Nats-Batch-Sequence"
H_BATCH_COMMIT = "Nats-Batch-Commit"
WRONG_LAST_SEQUENCE = 10071
RECOVER_ATTEMPTS = 5  # reads of an entity that another writer is still changing, before `unavailable`
BATCH_DUPLICATE = 10201


# What a lost or not yet restored connection looks like from nats-py: the caller may retry.
_UNAVAILABLE = (
    TimeoutError,  # nats-py's TimeoutError is one too
    NoRespondersError,
    ServiceUnavailableError,
    ConnectionClosedError,
    ConnectionReconnectingError,
    StaleConnectionError,
    OutboundBufferLimitError,
)


class _Append(NamedTuple):
    key: Key
    expected: int
    events: Sequence[Envelope]


def _append_key(req: _Append) -> Key:
    return req.key


class _Refused(Exception):
    """The server stored none of an atomic batch's appends."""


def _chunks(batch: list[_Append]) -> list[list[int]]:
    """Indices of `batch` in runs that hold each entity at most once and fit one atomic batch."""
    chunks: list[list[int]] = [[]]
    keys: set[Key] = set()
    events = 0
    for i, req in enumerate(batch):
        if req.key in keys or events + len(req.events) > MAX_BATCH:
            chunks.append([])
            keys.clear()
            events = 0
        chunks[-1].append(i)
        keys.add(req.key)
        events += len(req.events)
    return chunks


class _Meta(msgspec.Struct):
    floor: int = 0
    deleted: bool = False


DEFAULT_DUPLICATE_WINDOW = 120.0  # seconds: JetStream's own default


def command_msg_id(entity_type: str, entity_id: str, command_id: str) -> str:
    """The `Nats-Msg-Id` of a command's last event: the server stores it once per duplicate window.

    `cmd:` keeps it apart from the `{type}/{id}/{seq}` ids of the other events (a seq is digits).
    """
    return f"{entity_type}/{token(entity_id)}/cmd:{token(command_id)}"


def parse_nats_journal_url(url: str) -> tuple[str, str, float, int | None]:
    """`nats://host:port?prefix=memoir&duplicate_window=120&replicas=3` -> (server URL, prefix, window, replicas)."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise ConfigError(f"not a NATS URL: {redact_url(url)!r}")
    opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(opts) - {"prefix", "duplicate_window", "replicas"}
    if unknown:
        raise ConfigError(f"unknown NATS journal URL option(s) {sorted(unknown)} in {redact_url(url)!r}")
    raw = opts.get("duplicate_window", str(DEFAULT_DUPLICATE_WINDOW))
    try:
        window = float(raw)
    except ValueError:
        window = -1.0
    if not 0 < window <= 7 * 86400:
        raise ConfigError(f"duplicate_window={raw!r} in the NATS journal URL must be seconds, > 0 and <= 604800")
    replicas = None
    if "replicas" in opts:
        if opts["replicas"] not in ("1", "2", "3", "4", "5"):
            raise ConfigError(f"replicas={opts['replicas']!r} in the NATS journal URL must be 1 to 5")
        replicas = int(opts["replicas"])
    server = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return server, check_prefix(opts.get("prefix", "memoir")), window, replicas


class JetStreamJournal(Journal):
    prefix: str

    def __init__(
        self, url: str, *, replicas: int | None = None, ack_timeout: float = 10.0, auth: NatsAuth | None = None
    ) -> None:
        self._connect_to, self.prefix, self.duplicate_window, url_replicas = parse_nats_journal_url(url)
        self.auth = auth
        self.server = redact_url(self._connect_to)  # for messages: a password in the URL is never shown
        self.url = f"{self.server}?prefix={self.prefix}"
        if self.duplicate_window != DEFAULT_DUPLICATE_WINDOW:
            self.url += f"&duplicate_window={self.duplicate_window:g}"
        replicas = replicas or url_replicas or 1
        if replicas != 1:
            self.url += f"&replicas={replicas}"
        base = stream_prefix(self.prefix)
        self.stream = f"{base}_EVENTS"
        self.snapshot_stream = f"{base}_SNAPSHOTS"
        self.replicas = replicas
        self.ack_timeout = ack_timeout
        self.nc: NATS | None = None
        self.js: Any = None
        self._meta: Any = None
        self._checkpoints: Any = None
        self._acks: AckInbox | None = None
        self._unwatch: Any = None
        self._calls: set[anyio.CancelScope] = set()  # server calls in flight, ended at once on a drop
        # (entity) -> (last stream seq of its subject, head seq): what the next append expects
        self._last: dict[Key, tuple[int, int]] = {}
        self._writes: PipelinedBatcher[_Append, int] = PipelinedBatcher(
            self._flush, key=_append_key, in_flight=IN_FLIGHT, max_batch=MAX_BATCH, name="jetstream"
        )
        self._stack: contextlib.AsyncExitStack | None = None

    def event_stream(self, entity_type: str) -> str:
        """Views and consumers read every entity type from the journal stream itself."""
        return self.stream

    stream_for = event_stream  # the older name, kept until every caller asks `event_stream`

    def _lost(self) -> Unavailable:
        return Unavailable("connection lost", f"NATS at {self.server}: the write may or may not have landed")

    def _disconnected(self) -> None:
        for scope in list(self._calls):
            scope.cancel()  # their answers went down with the socket; nats-py would wait out its timeout

    def _reconnected(self) -> None:
        self._last.clear()  # what the server holds is asked again, entity by entity

    def _failure(self, exc: BaseException, what: str) -> JournalError:
        """A nats-py error as a JournalError: Unavailable when the server cannot be reached."""
        if isinstance(exc, JournalError):
            return exc
        if isinstance(exc, _UNAVAILABLE) or self.nc is None or not self.nc.is_connected:
            return Unavailable("connection lost", f"NATS at {self.server}: {what}: {exc!r}")
        return JournalError(f"JetStream journal at {self.server}: {what}: {exc}")

    @contextlib.contextmanager
    def _online(self, what: str) -> Iterator[None]:
        """Fail fast while disconnected, at once if the connection drops meanwhile, and say which it was."""
        if self.nc is None or not self.nc.is_connected:
            raise self._lost()
        scope = anyio.CancelScope()
        self._calls.add(scope)
        try:
            with scope:
                yield
        except (NatsError, JetStreamError) as exc:
            raise self._failure(exc, what) from exc
        finally:
            self._calls.discard(scope)
        if scope.cancelled_caught:
            raise self._lost()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:

        self.nc = await connect(
            self._connect_to,
            auth=self.auth,
            timeout=10,
            name="memoir-journal",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,  # back within a moment of the server, not nats-py's 2 s later
        )
        self.js = self.nc.jetstream(timeout=self.ack_timeout)
        try:
            await ensure_stream(
                self.js,
                api.StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.prefix}.events.>"],
                    storage=api.StorageType.FILE,
                    num_replicas=self.replicas,
                    allow_atomic=True,
                    allow_direct=True,
                    duplicate_window=self.duplicate_window,
                ),
            )
            await ensure_stream(
                self.js,
                api.StreamConfig(
                    name=self.snapshot_stream,
                    subjects=[f"{self.prefix}.snapshots.>"],
                    storage=api.StorageType.FILE,
                    num_replicas=self.replicas,
                    max_msgs_per_subject=16,
                    allow_direct=True,
                ),
            )
            base = stream_prefix(self.prefix)
            self._meta = await self.js.create_key_value(bucket=f"{base}_JOURNAL_META", replicas=self.replicas)
            self._checkpoints = await self.js.create_key_value(bucket=f"{base}_CHECKPOINTS", replicas=self.replicas)
        except (NatsError, JetStreamError, MemoirError) as exc:
            await self.nc.close()
            raise JournalError(f"cannot open the JetStream journal at {self.server}: {exc}") from exc
        self._acks = AckInbox(self.nc, self._lost)
        await self._acks.open()
        self._unwatch = watch(self.nc, disconnected=self._disconnected, reconnected=self._reconnected)
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._writes.run)
        stack.callback(self._writes.close)
        self._stack = stack

    async def close(self) -> None:

        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()  # the appends already taken are written and answered
        if self.nc is not None:
            nc, self.nc = self.nc, None
            if self._unwatch is not None:
                self._unwatch()
            if self._acks is not None:
                await self._acks.close()
            await close_quietly(nc)

    # -- appends -----------------------------------------------------------------------------------

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """Publish one message and return its ack as sent (a refusal included)."""
        return await self._request_batch([(subject, payload, headers)])

    async def _request_batch(self, messages: list[Message]) -> dict[str, Any]:
        """Publish messages in one write, the last with a reply; its ack as sent (a refusal included)."""
        assert self._acks is not None, "the JetStream journal is not open"
        subject = messages[-1][0]
        try:
            msg = await self._acks.request_batch(messages, self.ack_timeout)
        except (NatsError, TimeoutError) as exc:
            raise Unavailable("no answer", f"NATS at {self.server}: no ack for {subject}: {exc!r}") from exc
        try:
            return decode_ack(msg)
        except PublishError as exc:  # a 503: the stream is not there (yet: a restarted server loads it)
            raise Unavailable("stream unavailable", f"JetStream journal: {subject}: {exc}") from exc

    async def _expectation(self, key: Key) -> tuple[int, int]:
        """(last stream seq of the entity's subject, head seq), from cache or the server."""
        known = self._last.get(key)
        if known is not None:
            return known
        meta = await self._load_meta(key)
        if meta.deleted:
            raise EntityDeleted(*key)
        subject = event_subject(self.prefix, *key)
        with self._online(f"reading the last event of {subject}"):
            try:
                last = await self.js.get_last_msg(self.stream, subject, direct=True)
                found = (last.seq, max(meta.floor, int((last.headers or {}).get(H_SEQ, 0))))
            except NotFoundError:
                found = (0, meta.floor)
        self._last[key] = found
        return found

    def _headers(self, env: Envelope, last: bool) -> dict[str, str]:
        """An event's headers; the last event of an append with a command id is deduplicated by it."""
        h = event_headers(env)
        if env.reply is not None:
            h[H_REPLY] = token(env.reply.decode())
        if last and env.command_id is not None:
            h[H_MSG_ID] = command_msg_id(env.entity_type, env.entity_id, env.command_id)
        return h

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        key = check_batch(events, expected_seq)
        if self.nc is not None and not self.nc.is_connected:
            raise self._lost()  # fail fast: nothing is sent while nats-py reconnects
        if len(events) > MAX_BATCH:
            raise JournalError(f"the JetStream journal takes at most {MAX_BATCH} events in one append")
        first = await self._writes.submit(_Append(key, expected_seq, events))
        self._notify_appended()
        return [msgspec.structs.replace(e, position=first + i) for i, e in enumerate(events)]

    async def _flush(self, batch: list[_Append]) -> list[int | BaseException]:
        """Group commit: the appends of many actors as one atomic batch, so one fsync serves them all."""
        results: list[int | BaseException] = [0] * len(batch)
        for chunk in _chunks(batch):  # each entity at most once per chunk; chunks run in order
            await self._write_chunk([batch[i] for i in chunk], chunk, results)
        return results

    async def _write_chunk(self, reqs: list[_Append], where: list[int], results: list[int | BaseException]) -> None:
        if len(reqs) >= ATOMIC_FROM:
            try:
                firsts = await self._write_atomic(reqs)
            except _Refused:
                pass  # which append the server objected to is not said: each on its own decides
            except Exception as exc:  # noqa: BLE001 - no ack: any of them may have landed
                exc = self._failure(exc, "appending an atomic batch")
                for req, i in zip(reqs, where, strict=True):
                    self._last.pop(req.key, None)
                    results[i] = exc
                return
            else:
                for i, first in zip(where, firsts, strict=True):
                    results[i] = first
                return

        async def one(req: _Append, i: int) -> None:
            try:
                results[i] = await self._write_one(req)
            except Exception as exc:  # noqa: BLE001 - the caller hears of it
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for req, i in zip(reqs, where, strict=True):
                tg.start_soon(one, req, i)

    async def _write_one(self, req: _Append) -> int:
        """One entity's append on its own: a plain publish, or that entity's atomic batch."""
        key, events = req.key, req.events
        try:
            last_seq, head = await self._expectation(key)
            if head != req.expected:
                raise Conflict(key[0], key[1], req.expected, head)
            subject = event_subject(self.prefix, *key)
            first = await (self._append_one if len(events) == 1 else self._append_batch)(subject, events, last_seq)
        except (NatsError, JetStreamError) as exc:
            self._last.pop(key, None)
            raise self._failure(exc, f"appending to {key[0]}/{key[1]}") from exc
        except Conflict:
            self._last.pop(key, None)
            await self._raise_if_repeat(events[-1])  # a repeat decided on a stale seq is still a repeat
            raise
        except BaseException:
            self._last.pop(key, None)  # a conflict, a deletion, or no ack: ask the server next time
            raise
        self._last[key] = (first + len(events) - 1, events[-1].seq)
        return first

    async def _write_atomic(self, reqs: list[_Append]) -> list[int]:
        """Many entities' appends in one atomic batch, each checked against its own last subject seq.

        Raises `_Refused` if the server stores none of them (a stale expectation, a duplicate id).
        """
        lasts = await self._expectations([r.key for r in reqs])
        if any(head != req.expected for req, (_, head) in zip(reqs, lasts, strict=True)):
            raise _Refused  # a known conflict, found before anything is sent: the single write reports it
        ack = await self._publish_atomic(
            [
                (event_subject(self.prefix, *r.key), r.events, last_seq)
                for r, (last_seq, _) in zip(reqs, lasts, strict=True)
            ]
        )
        if "error" in ack:
            raise _Refused
        position = int(ack["seq"]) - sum(len(r.events) for r in reqs) + 1
        firsts = []
        for req in reqs:
            firsts.append(position)
            position += len(req.events)
            self._last[req.key] = (position - 1, req.events[-1].seq)
        return firsts

    async def _expectations(self, keys: list[Key]) -> list[tuple[int, int]]:
        """`_expectation` for many keys, asking the server for the unknown ones concurrently."""
        unknown = [k for k in keys if k not in self._last]
        if unknown:
            failed: list[BaseException] = []

            async def load(key: Key) -> None:
                try:
                    await self._expectation(key)
                except EntityDeleted:
                    pass
                except Exception as exc:  # noqa: BLE001 - re-raised below
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                for key in unknown:
                    tg.start_soon(load, key)
            if failed:
                raise failed[0]
            if any(k not in self._last for k in keys):
                raise _Refused  # a deleted entity among them: its single write says so
        return [self._last[k] for k in keys]

    async def _append_one(self, subject: str, events: Sequence[Envelope], last_seq: int) -> int:
        env = events[0]
        headers = self._headers(env, last=True)
        headers[H_EXPECTED_LAST_SUBJECT_SEQ] = str(last_seq)
        ack = await self._request(subject, env.payload, headers)
        self._check(ack, env)
        if ack.get("duplicate"):
            if env.command_id is not None:
                await self._repeat(int(ack["seq"]), env)
            await self._same_write(ack["seq"], env)
        return int(ack["seq"])

    async def _append_batch(self, subject: str, events: Sequence[Envelope], last_seq: int) -> int:
        ack = await self._publish_atomic([(subject, events, last_seq)])
        self._check(ack, events[0])
        return int(ack["seq"]) - len(events) + 1

    async def _repeat(self, seq: int, env: Envelope) -> None:
        """The server dropped `env` as a repeat of the message at stream `seq`: answer with that write."""
        assert env.command_id is not None
        try:
            with self._online("reading a command's first write"):
                stored = await self.js.get_msg(self.stream, seq=seq, direct=True)
        except JournalError as exc:
            if not isinstance(exc.__cause__, NotFoundError):
                raise
            # Deleted (truncated) since, but still in the window: still a repeat, its reply gone.
            raise DuplicateCommand(
                env.entity_type,
                env.entity_id,
                env.command_id,
                (await self._load_meta((env.entity_type, env.entity_id))).floor,
                None,
            ) from None
        h = stored.headers or {}
        reply = h.get(H_REPLY)
        raise DuplicateCommand(
            env.entity_type,
            env.entity_id,
            env.command_id,
            int(h.get(H_SEQ, 0)),
            None if reply is None else untoken(str(reply)).encode(),
        )

    async def _raise_if_repeat(self, env: Envelope) -> None:
        """DuplicateCommand if the entity already stored the command id of this refused append."""
        if env.command_id is None:
            return
        found = await self.find_command(env.entity_type, env.entity_id, env.command_id)
        if found is not None:
            raise DuplicateCommand(env.entity_type, env.entity_id, env.command_id, *found)

    async def find_command(self, entity_type: str, entity_id: str, command_id: str) -> tuple[int, bytes | None] | None:
        """The first write of a command id among the entity's stored events (a read of the entity)."""
        run: Envelope | None = None
        for env in await self.read(entity_type, entity_id):
            if env.command_id == command_id:
                run = env
                if env.reply is not None:
                    break  # a command's last event carries its reply
            elif run is not None:
                break
        return None if run is None else (run.seq, run.reply)

    async def _publish_atomic(self, parts: list[tuple[str, Sequence[Envelope], int]]) -> dict[str, Any]:
        """One atomic batch of (subject, events, expected last subject seq) parts; the commit's ack.

        Each part's first event carries its subject's expectation, so the server checks every
        entity in the batch and stores all of it or none.
        """
        assert self.nc is not None
        batch_id = secrets.token_hex(11)
        messages: list[Message] = []
        for subject, events, last_seq in parts:
            for j, env in enumerate(events):
                headers = self._headers(env, last=j == len(events) - 1)
                headers[H_BATCH_ID] = batch_id
                headers[H_BATCH_SEQ] = str(len(messages) + 1)
                if j == 0:
                    headers[H_EXPECTED_LAST_SUBJECT_SEQ] = str(last_seq)
                messages.append((subject, env.payload, headers))
        messages[-1][2][H_BATCH_COMMIT] = "1"
        return await self._request_batch(messages)

    def _check(self, ack: dict[str, Any], env: Envelope) -> None:
        err = ack.get("error")
        if err is None:
            return
        code = err.get("err_code")
        if code == WRONG_LAST_SEQUENCE:
            raise Conflict(env.entity_type, env.entity_id, env.seq - 1)
        if code == BATCH_DUPLICATE:
            # A batch whose message ids are already stored: a retried write that landed, or another
            # writer's events under the same ids. Either way this write did not happen; re-read.
            raise Conflict(env.entity_type, env.entity_id, env.seq - 1)
        raise JournalError(f"JetStream refused {env.key}: {code} {err.get('description')}")

    async def _same_write(self, seq: int, env: Envelope) -> None:
        """A duplicate Msg-Id ack: fine only if the stored message is this write."""
        stored = await self.js.get_msg(self.stream, seq=seq, direct=True)
        if stored.data != env.payload or (stored.headers or {}).get(H_COMMAND_ID) != (
            token(env.command_id) if env.command_id else None
        ):
            raise Conflict(env.entity_type, env.entity_id, env.seq - 1)

    # -- reads -------------------------------------------------------------------------------------

    def _envelope(self, subject: str, headers: Any, data: bytes, position: int) -> Envelope:
        try:
            env = envelope_from_message(subject, headers, data)
        except ValueError as exc:
            raise JournalError(f"JetStream journal: message {position} on {subject} is not an event: {exc}") from exc
        reply = (headers or {}).get(H_REPLY)
        return msgspec.structs.replace(
            env, position=position, reply=None if reply is None else untoken(str(reply)).encode()
        )

    async def _scan(self, stream: str, subject: str, start: int = 1, limit: int | None = None) -> list[Msg]:
        """Messages of `subject` from stream sequence `start`, in order, with an ephemeral consumer."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=10.0,
            mem_storage=True,
        )
        with self._online(f"reading {subject}"):
            psub = await self.js.pull_subscribe(subject, stream=stream, config=config)
            consumer = ""
            try:
                info = await psub.consumer_info()
                consumer = info.name
                total = info.num_pending if limit is None else min(limit, info.num_pending)
                out: list[Msg] = []
                while len(out) < total:
                    out.extend(await psub.fetch(min(1000, total - len(out)), timeout=10))
                return out
            finally:
                # Shielded but bounded: the ephemeral consumer also goes by itself (inactive_threshold).
                if consumer:
                    with anyio.move_on_after(2, shield=True), contextlib.suppress(NatsError, JetStreamError):
                        await self.js.delete_consumer(stream, consumer)
                with contextlib.suppress(NatsError):
                    await psub.unsubscribe()
        raise AssertionError("unreachable")  # _online re-raises what ended the scope

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        return await self._read(entity_type, entity_id, from_seq, to_seq, limit)

    async def _read(
        self, entity_type: str, entity_id: str, from_seq: int, to_seq: int | None, limit: int | None, start: int = 1
    ) -> list[Envelope]:
        subject = event_subject(self.prefix, entity_type, entity_id)
        out = []
        for m in await self._scan(self.stream, subject, start):
            env = self._envelope(m.subject, m.headers, m.data, m.metadata.sequence.stream)
            if env.seq < from_seq or (to_seq is not None and env.seq > to_seq):
                continue
            out.append(env)
            if limit is not None and len(out) >= limit:
                break
        return out

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        msgs = await self._scan(self.stream, f"{self.prefix}.events.>", from_position, limit)
        return [self._envelope(m.subject, m.headers, m.data, m.metadata.sequence.stream) for m in msgs]

    async def head(self, entity_type: str, entity_id: str) -> int:
        key = (entity_type, entity_id)
        self._last.pop(key, None)  # ask the server: another writer may have moved it
        try:
            return (await self._expectation(key))[1]
        except EntityDeleted:
            return (await self._load_meta(key)).floor

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        return (await self._load_meta((entity_type, entity_id))).deleted

    async def last_position(self) -> int:
        with self._online("reading the stream's last position"):
            info = await self.js.stream_info(self.stream)
            return int(info.state.last_seq)
        raise AssertionError("unreachable")

    # -- deletion ----------------------------------------------------------------------------------

    async def _load_meta(self, key: Key) -> _Meta:
        with self._online(f"reading the deletion floor of {key[0]}/{key[1]}"):
            try:
                entry = await self._meta.get(kv_key(key))
            except KeyNotFoundError:
                return _Meta()
        return msgspec.json.decode(entry.value, type=_Meta) if entry.value else _Meta()

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        key = (entity_type, entity_id)
        self._last.pop(key, None)
        meta = await self._load_meta(key)
        events = await self.read(entity_type, entity_id)
        head = max([meta.floor, *(e.seq for e in events)])
        upto = head if to_seq is None else min(to_seq, head)
        for env in events:
            if env.seq <= upto:
                await self.js.delete_msg(self.stream, env.position)
        meta = _Meta(floor=max(meta.floor, upto), deleted=meta.deleted or to_seq is None)
        await self._meta.put(kv_key(key), msgspec.json.encode(meta))
        if to_seq is None:
            await self.js.purge_stream(self.snapshot_stream, subject=self._snapshot_subject(key))

    def _make_key_store(self) -> KeyStore:
        return KvKeyStore(prefix=self.prefix, replicas=self.replicas, js=lambda: self.js, online=self._online)

    # -- snapshots and checkpoints -----------------------------------------------------------------

    def _snapshot_subject(self, key: Key) -> str:
        return f"{self.prefix}.snapshots.{key[0]}.{token(key[1])}"

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        key = (snapshot.entity_type, snapshot.entity_id)
        headers = {H_SEQ: str(snapshot.seq), H_RECORDED: str(snapshot.recorded_at)}
        last = self._last.get(key)
        if last is not None and last[1] == snapshot.seq:
            headers[H_POSITION] = str(last[0])  # where recovery resumes reading events
        await self.js.publish(self._snapshot_subject(key), snapshot.payload, headers=headers)

    def _snapshot(self, key: Key, headers: Any, data: bytes) -> Snapshot:
        h = headers or {}
        return Snapshot(
            entity_type=key[0],
            entity_id=key[1],
            seq=int(h[H_SEQ]),
            recorded_at=int(h.get(H_RECORDED, 0)),
            payload=data,
        )

    async def _snapshots(self, key: Key) -> list[tuple[Snapshot, int, int]]:
        """(snapshot, its stream seq, the event position it covers) for every kept snapshot."""
        return [
            (
                self._snapshot(key, m.headers, m.data),
                m.metadata.sequence.stream,
                int((m.headers or {}).get(H_POSITION, 0)),
            )
            for m in await self._scan(self.snapshot_stream, self._snapshot_subject(key))
        ]

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        found = await self._latest_snapshot((entity_type, entity_id), max_seq)
        return None if found is None else found[0]

    async def _latest_snapshot(self, key: Key, max_seq: int | None) -> tuple[Snapshot, int] | None:
        try:
            last = await self.js.get_last_msg(self.snapshot_stream, self._snapshot_subject(key), direct=True)
        except NotFoundError:
            return None
        snap = self._snapshot(key, last.headers, last.data)
        if max_seq is None or snap.seq <= max_seq:
            return snap, int((last.headers or {}).get(H_POSITION, 0))
        fits = [(s, p) for s, _, p in await self._snapshots(key) if s.seq <= max_seq]
        return max(fits, key=lambda sp: sp[0].seq) if fits else None

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        for snap, seq, _ in await self._snapshots((entity_type, entity_id)):
            if snap.seq <= to_seq:
                await self.js.delete_msg(self.snapshot_stream, seq)

    async def load_checkpoint(self, name: str) -> int:
        try:
            entry = await self._checkpoints.get(name)
        except KeyNotFoundError:
            return 0
        return int(entry.value or 0)

    async def save_checkpoint(self, name: str, position: int) -> None:
        await self._checkpoints.put(name, str(position).encode())

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        """The entity's snapshot and events, and a head that is the last event read.

        The events are read first and the head (what the next append expects) after: a write that
        lands in between — another member that owned the entity a moment ago, still finishing its
        turn — would otherwise give a head past the events, and the next append would pass the
        server's check on state that misses that write. So the two must agree, or it reads again.
        """
        key = (entity_type, entity_id)
        for _ in range(RECOVER_ATTEMPTS):
            meta = await self._load_meta(key)
            if meta.deleted:
                return Recovery(None, [], meta.floor, deleted=True)
            found = await self._latest_snapshot(key, None)
            snapshot, start = (found[0], found[1] + 1) if found else (None, 1)
            events = await self._read(entity_type, entity_id, (snapshot.seq + 1) if snapshot else 1, None, None, start)
            self._last.pop(key, None)
            _, head = await self._expectation(key)
            read = events[-1].seq if events else snapshot.seq if snapshot else 0
            if head == max(meta.floor, read):
                return Recovery(snapshot, events, head)
            self._last.pop(key, None)  # written while we read: read it all again
        raise Unavailable(
            "entity busy", f"{entity_type}/{entity_id} kept changing while it was read ({RECOVER_ATTEMPTS} attempts)"
        )
