"""NATS helpers every layer above shares: connecting with errors that say what broke, closing,
noticing a lost connection, one inbox for many publish acks, and creating streams.

Connections made by `connect` log one warning when they drop and one info when they are back,
and tell whoever `watch`es them: the journal and the outbox publisher fail the acks they still
wait for at once, rather than after their ack timeout (the answers went down with the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, InvalidUserCredentialsError, NoRespondersError, SlowConsumerError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from ..model.errors import MemoirError
from . import frames
from ._guard import GuardedClient as GuardedClient  # re-exported: the client `connect` makes
from ._guard import drop_socket
from .auth import NatsAuth
from .redact import redact_url, scrub, url_secrets

log = structlog.get_logger("memoir.nats")


def _not_tls_eof_noise(record: logging.LogRecord) -> bool:
    """nats-py's protocol answers EOF with True, which asyncio's TLS transport warns of on every close."""
    return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_not_tls_eof_noise)

Callback = Callable[[], Awaitable[None]]
Hook = Callable[[], None]


class _Watchers:
    """Who wants to hear that a connection dropped or came back."""

    def __init__(self) -> None:
        self.disconnected: list[Hook] = []
        self.reconnected: list[Hook] = []


_watchers: weakref.WeakKeyDictionary[NATS, _Watchers] = weakref.WeakKeyDictionary()


def watch(nc: NATS, *, disconnected: Hook | None = None, reconnected: Hook | None = None) -> Hook:
    """Call `disconnected` / `reconnected` when a connection made by `connect` drops / is back.

    Returns the function that stops watching. Connections made elsewhere are never reported.
    """
    w = _watchers.setdefault(nc, _Watchers())
    if disconnected is not None:
        w.disconnected.append(disconnected)
    if reconnected is not None:
        w.reconnected.append(reconnected)

    def unwatch() -> None:
        if disconnected is not None and disconnected in w.disconnected:
            w.disconnected.remove(disconnected)
        if reconnected is not None and reconnected in w.reconnected:
            w.reconnected.remove(reconnected)

    return unwatch


class _GiveUp(Exception):
    """A connection attempt failed in a way that will not pass by retrying."""


redact = redact_url  # the name the layers above have used


def _auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (AuthorizationError, InvalidUserCredentialsError)) or "authorization violation" in text


def _why(errors: list[BaseException], method: str | None, auth: NatsAuth, tls: bool, timeout: float) -> str:
    """What the connection attempts ran into, the most telling first."""
    for exc in errors:
        if _auth_error(exc):
            if method:
                return f"authentication failed (the server refused the {method})"
            return (
                "authentication required (the server wants a credential: give --nats-creds, --nats-nkey,"
                " --nats-user with --nats-password-file, or --nats-token-file)"
            )
    for exc in errors:
        if isinstance(exc, ssl.SSLError):
            detail = str(exc).split("] ", 1)[-1].split(" (_ssl.c", 1)[0]  # without OpenSSL's source line
            if not tls:
                return f"TLS required (the server asks for TLS; the URL says nats://, use tls:// and its CA): {detail}"
            if isinstance(exc, ssl.SSLCertVerificationError):
                ca = f"the CA in {auth.tls_ca}" if auth.tls_ca else "the system's CAs (give its CA with --nats-ca)"
                return f"TLS handshake failed: the server's certificate is not trusted by {ca}: {detail}"
            return f"TLS handshake failed: {detail}"
    for exc in errors:
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
    for exc in reversed(errors):
        if not isinstance(exc, TimeoutError):
            return str(exc) or type(exc).__name__
    return f"timed out (no NATS server answered within {timeout:g} s)"


class _Connection:
    """One `connect`: the errors met while connecting, then the client and whether an outage was told.

    Its methods are nats-py's callbacks; until the client is up, errors are kept for the message.
    """

    def __init__(self, url: str, name: str, disconnected_cb: Callback | None, reconnected_cb: Callback | None) -> None:
        self.shown = redact(url)
        self.name = name
        self.disconnected_cb = disconnected_cb
        self.reconnected_cb = reconnected_cb
        self.errors: list[BaseException] = []
        self.nc: NATS | None = None  # once connected
        self.down = False  # one warning per outage, however many servers are tried meanwhile

    async def attempt(self, nc: NATS, url: str, timeout: float, options: dict[str, Any]) -> bool:
        """Connect `nc` within `timeout`; False (the reasons in `errors`) if it did not."""
        try:
            with anyio.move_on_after(timeout):
                await nc.connect(
                    [u.strip() for u in url.split(",") if u.strip()],
                    connect_timeout=max(1, min(int(timeout), 2)),  # seconds, whole (nats-py's type)
                    error_cb=self.on_error,
                    disconnected_cb=self.on_disconnected,
                    reconnected_cb=self.on_reconnected,
                    **options,
                )
                self.nc = nc
                return True
        except _GiveUp:
            pass
        except Exception as exc:  # noqa: BLE001 - OSError, nats errors: told as one message
            self.errors.append(exc)
        return False

    def failure(self, url: str, auth: NatsAuth, options: dict[str, Any], timeout: float) -> MemoirError:
        """What the attempts ran into, as one message naming the URL, secrets redacted."""
        tls = url.strip().startswith("tls://") or options.get("tls") is not None
        in_url = "the user/password or token in the URL" if url_secrets(url) else None
        why = _why(self.errors, auth.method() or in_url, auth, tls, timeout)
        reason = scrub(why, url_secrets(url) + auth.secrets())
        return MemoirError(f"cannot connect to NATS at {self.shown}: {reason}")

    async def on_error(self, exc: Exception) -> None:
        """Instead of nats-py's default, which prints each error with a traceback."""
        if self.nc is not None:  # once connected, the disconnect and reconnect callbacks tell it
            if isinstance(exc, SlowConsumerError) and isinstance(self.nc, GuardedClient):
                self.nc.slow_consumer(exc)
            return
        self.errors.append(exc)
        if _auth_error(exc) or isinstance(exc, ssl.SSLError):
            raise _GiveUp  # out of nats-py's retry loop, leaving the socket for close() in connect

    async def on_disconnected(self) -> None:
        if self.nc is not None and not self.nc.is_closed:  # nats-py also calls it on a deliberate close
            if not self.down:
                log.warning("NATS connection lost; reconnecting", url=self.shown, name=self.name)
            self.down = True
            for hook in list(_watchers.get(self.nc, _Watchers()).disconnected):
                hook()
        if self.disconnected_cb is not None:
            await self.disconnected_cb()

    async def on_reconnected(self) -> None:
        if self.nc is not None:
            self.down = False
            log.info("NATS connection back", url=self.shown, name=self.name)
            for hook in list(_watchers.get(self.nc, _Watchers()).reconnected):
                hook()
        if self.reconnected_cb is not None:
            await self.reconnected_cb()


# Liveness, on both ends of every connection: a member cut off from NATS (a partition drops its
# bytes, no FIN or RST reaches either side) must stop receiving commands within seconds, not after
# nats-py's and nats-server's 2-minute default ping. A client pings every PING_INTERVAL_S and calls
# the server gone after MAX_OUTSTANDING_PINGS unanswered (then reconnects elsewhere); a server Memoir
# configures (the embedded one, `memoir cluster up`, deploy/) does the same to its clients, and so
# drops a silent member's queue subscriptions: detection takes (pings + 1) x interval, ~6 s.
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 2
SERVER_PINGS = f'ping_interval: "{PING_INTERVAL_S}s"\nping_max: {MAX_OUTSTANDING_PINGS}\n'


async def connect(
    url: str,
    *,
    timeout: float = 5.0,
    auth: NatsAuth | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    **options: Any,
) -> NATS:
    """Connect to NATS or fail within `timeout` with a MemoirError naming the URL (secrets redacted)
    and what happened: refused, authentication failed (naming the credential, never its value),
    TLS required, a certificate the CA given did not sign, timed out. `auth` gives the credential
    and TLS (`NatsAuth`); a user:password@ or token@ in the URL works too.

    `url` may list several servers of one cluster, comma-separated; the client learns the rest
    of the cluster from the server it reaches, and reconnects to another when that one goes.

    nats-py keeps retrying an initial connection that is refused, whatever allow_reconnect says:
    a server still starting is waited for. A refused login or a TLS mismatch will not pass, so it
    ends the wait at once.

    The client is a `GuardedClient`: a message that would stop nats-py's read loop (a subject
    that is not UTF-8) is dropped and counted instead (`_guard.py`).
    """
    auth = auth or NatsAuth()
    options = {
        "ping_interval": PING_INTERVAL_S,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        **auth.options(),
        **options,
    }
    conn = _Connection(url, options.get("name", ""), disconnected_cb, reconnected_cb)
    nc = GuardedClient()
    try:
        if await conn.attempt(nc, url, timeout, options):
            return nc
    except BaseException:  # cancelled (a caller's own timeout): what the attempt opened is closed too
        await close_within(nc, 2.0)
        raise
    await close_within(nc, 2.0)
    raise conn.failure(url, auth, options, timeout) from None


async def close_within(nc: NATS, seconds: float, *, drain: bool = False) -> None:
    """Close (`drain`: flush first) for at most `seconds`, then drop the socket whatever happened.

    A socket left open goes to the garbage collector, a ResourceWarning once its loop has closed;
    and nats-py's close can wait for ever on one (it swallows a cancel while it waits for a
    reconnect, then waits for a socket a stopped server never reads). The cancel scope here is
    re-delivered until the close gives up, which `asyncio.wait_for`'s one cancel is not; the
    socket goes also when the close returned at once (a failed first attempt marks it closed)."""
    try:
        with anyio.move_on_after(seconds, shield=True), contextlib.suppress(Exception):
            await (close_quietly(nc) if drain else nc.close())
    finally:
        drop_socket(nc)


async def respond(msg: Msg, body: bytes) -> None:
    """Answer a request with `body` alone. nats-py's `Msg.respond` sends the request's headers back
    with it: a bearer token included, to an inbox that other clients may be allowed to read."""
    if msg.reply:
        await msg._client.publish(msg.reply, body)


async def close_quietly(nc: NATS) -> None:
    """Drain (flush what was published, then close); if the server is already gone, just close."""
    try:
        await nc.drain()
    except Exception:  # noqa: BLE001 - nats-py raises several types once a connection is broken
        with contextlib.suppress(Exception):  # a socket already gone (BrokenPipe) is closed enough
            await nc.close()


# -- publish acks ------------------------------------------------------------------------------


class PublishError(Exception):
    """JetStream did not store a published message; the message says why."""


_ack_decoder = msgspec.json.Decoder(dict[str, Any])
ACK_PENDING_BYTES = 16 * 1024 * 1024  # acks are ~100 bytes: room for a hundred thousand in flight


def decode_ack(msg: Msg) -> dict[str, Any]:
    """A JetStream publish ack as sent, refusals (`"error"`) included; PublishError if it is none."""
    if msg.headers and msg.headers.get("Status") == "503":
        raise PublishError("no stream is listening on that subject (503 no responders)")
    try:
        return _ack_decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        raise PublishError(f"unreadable publish ack: {msg.data[:200]!r}") from exc


def check_ack(msg: Msg) -> dict[str, Any]:
    """A JetStream publish ack, or PublishError with the server's reason."""
    ack = decode_ack(msg)
    if "error" in ack:
        err = ack["error"]
        raise PublishError(f"{err.get('err_code')}: {err.get('description')}")
    return ack


def _expire(fut: asyncio.Future[Msg]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no publish ack"))


class AckInbox:
    """One inbox subscription for all pending publish acks: pipelined publishing that still sees
    every refusal (nats-py's publish_async does not, nats.py #985).

    asyncio futures and timer handles, not anyio events and scopes: this runs once per message.
    When the connection drops, every pending ack fails at once with `lost()`, and publishing
    fails the same way until it is back: those answers are not coming.
    """

    def __init__(self, nc: NATS, lost: Callable[[], Exception]) -> None:
        self.nc = nc
        self.lost = lost
        self.prefix = f"{nc.new_inbox()}.{secrets.token_hex(4)}."
        self.pending: dict[str, asyncio.Future[Msg]] = {}
        self.n = 0
        self._sub: Any = None
        self._unwatch: Hook | None = None

    async def open(self) -> None:
        # Bounded: any client allowed to publish to inboxes could otherwise fill this one without limit.
        self._sub = await self.nc.subscribe(f"{self.prefix}*", cb=self._on_ack, pending_bytes_limit=ACK_PENDING_BYTES)
        self._unwatch = watch(self.nc, disconnected=self.fail_pending)

    async def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):  # the connection is closed already
                await sub.unsubscribe()
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()

    def fail_pending(self) -> None:
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self.lost())
                fut.exception()  # "retrieved": a publisher that gave up on it must not be warned of it

    async def _on_ack(self, msg: Msg) -> None:
        fut = self.pending.pop(msg.subject, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _wait(self, reply: str, fut: asyncio.Future[Msg], timeout: float) -> Msg:
        # A timer handle, not a cancel scope: this runs once per append, and a scope costs more.
        timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self.pending.pop(reply, None)

    async def publish_batch(self, messages: Sequence[frames.Message]) -> asyncio.Future[Msg]:
        """Publish many messages in one write, only the last with an ack (an atomic batch's commit,
        a chain's last); the future holds the ack (or the connection's loss)."""
        return (await self._send(messages))[1]

    async def request_batch(self, messages: Sequence[frames.Message], timeout: float) -> Msg:
        """`publish_batch`, then wait up to `timeout` for the ack (TimeoutError)."""
        reply, fut = await self._send(messages)
        return await self._wait(reply, fut, timeout)

    async def _send(self, messages: Sequence[frames.Message]) -> tuple[str, asyncio.Future[Msg]]:
        assert messages, "nothing to publish"
        if not self.nc.is_connected:
            raise self.lost()
        self.n += 1
        reply = f"{self.prefix}{self.n}"
        fut = self.pending[reply] = asyncio.get_running_loop().create_future()
        try:
            await frames.publish(self.nc, messages, [""] * (len(messages) - 1) + [reply])
        except BaseException:
            self.pending.pop(reply, None)
            raise
        return reply, fut


# -- streams -----------------------------------------------------------------------------------

STREAM_NOT_FOUND = 10059
STREAM_NAME_IN_USE = 10058
CLUSTER_NOT_AVAILABLE = 10008  # "JetStream system temporarily unavailable": a leader election
_PASSING = {STREAM_NOT_FOUND, STREAM_NAME_IN_USE, CLUSTER_NOT_AVAILABLE}


def _passing(exc: Exception) -> bool:
    """Whether a stream create/update failed for a reason that goes away by itself."""
    if isinstance(exc, (TimeoutError, NatsTimeoutError, NoRespondersError, ServiceUnavailableError)):
        return True
    if isinstance(exc, APIError):
        return exc.err_code in _PASSING
    return isinstance(exc, NatsError) and not isinstance(exc, APIError)  # reconnecting, stale, …


def describe(exc: BaseException) -> str:
    """A nats-py error in one line: the server's code and description where there is one."""
    if isinstance(exc, APIError) and (exc.err_code or exc.description):
        return f"{exc.description} (err_code {exc.err_code})"
    return str(exc) or type(exc).__name__


# Seconds one create/update attempt may take. While a stream is being created, the meta leader drops
# other requests for it: a member starting beside another waited out its client's whole request
# timeout (5 to 10 s) per stream, and members took 13 to 23 s to start; a dropped attempt now costs this.
_ATTEMPT = 2.0


async def ensure_stream(js: Any, config: api.StreamConfig, *, timeout: float = 20.0) -> None:
    """Create the stream, or bring an existing one to this configuration.

    Retries with backoff through what passes by itself (a concurrent creator, a leader election,
    a request timeout) for at most `timeout` seconds; then, or at once for a refusal that will
    not pass (a bad configuration, no space), one MemoirError naming the stream and the reason.
    """
    deadline = anyio.current_time() + timeout
    backoff = 0.05
    while True:
        try:
            with anyio.fail_after(min(_ATTEMPT, max(0.1, deadline - anyio.current_time()))):
                try:
                    await js.stream_info(config.name)
                except NotFoundError:
                    await js.add_stream(config)
                else:
                    await js.update_stream(config)
            return
        except Exception as exc:  # noqa: BLE001 - sorted below: passing, or reported
            if not _passing(exc):
                raise MemoirError(f"cannot create or update JetStream stream {config.name}: {describe(exc)}") from None
            if anyio.current_time() + backoff > deadline:
                raise MemoirError(
                    f"cannot create or update JetStream stream {config.name}: still failing after {timeout:g} s: "
                    f"{describe(exc)}"
                ) from None
        await anyio.sleep(backoff)
        backoff = min(backoff * 2, 1.0)
