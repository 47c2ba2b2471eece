"""deploy/nats-server.conf as shipped (with its users' passwords from the environment): each role
does its job and is refused the rest.

- runtime: `memoir run` serves commands, publishes events, keeps its views and consumers.
- client: sends a command and gets its reply; cannot publish an event, read a stream, purge or
  delete one, or listen in on the runtime's replies.
- reader: consumes an event stream; cannot send a command, delete a stream or read other streams.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.errors import Error as NatsError
from support.process import ROOT, RunningRuntime
from support.waiting import eventually
from wire.servers import nats_server

from runtime.serve.service.client import Client
from runtime.wire.auth import NatsAuth

pytestmark = pytest.mark.anyio

DEPLOY = ROOT / "deploy"
ROLES = ("runtime", "client", "reader")
INBOX = {"runtime": "_INBOX_memoir", "reader": "_INBOX_reader"}


class Role:
    """A raw nats-py connection as one role, recording the server's permission refusals."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url, self.user, self.password = url, user, password
        self.refusals: list[str] = []
        self.nc: Any = None

    async def __aenter__(self) -> Role:
        async def on_error(exc: Exception) -> None:
            self.refusals.append(repr(exc))  # nats-py errors put their text in args, not str()

        options = NatsAuth(user=self.user, password=self.password, inbox_prefix=INBOX.get(self.user)).options()
        self.nc = await nats.connect(self.url, error_cb=on_error, allow_reconnect=False, **options)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def refused(self, what: str) -> None:
        """Wait until the server said it refused `what` (a subject) to this user."""

        async def said() -> bool:
            await self.nc.flush(timeout=2)  # whatever was published or subscribed reached the server
            return any("permissions violation" in r.lower() and what.lower() in r.lower() for r in self.refusals)

        await eventually(said, timeout=10, what=f"{self.user} refused {what} (refusals: {self.refusals})")


@pytest.fixture
async def shipped_server(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """nats-server with deploy/nats-server.conf and its include, moved to a free port and a temp store."""
    # as deploy/nats-accounts.conf says to make them: a letter first, or nats-server may read the
    # value as a number or a date (a token_urlsafe password starting "3-29" failed that way in CI)
    passwords = {role: "p" + secrets.token_hex(18) for role in ROLES}
    shutil.copy(DEPLOY / "nats-accounts.conf", tmp_path / "nats-accounts.conf")
    text = (DEPLOY / "nats-server.conf").read_text()
    assert "listen: 0.0.0.0:4222" in text and "store_dir: /var/lib/nats" in text
    conf = text.replace("listen: 0.0.0.0:4222", 'listen: "127.0.0.1:{port}"').replace(
        "store_dir: /var/lib/nats", 'store_dir: "{store}"'
    )
    env = {f"NATS_{role.upper()}_PASSWORD": pw for role, pw in passwords.items()}
    async with nats_server(conf, tmp_path, env=env) as port:
        yield f"nats://127.0.0.1:{port}", passwords


async def test_each_role_does_its_job_and_nothing_more(
    shipped_server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, passwords = shipped_server
    (tmp_path / "runtime.pw").write_text(passwords["runtime"])
    rt = RunningRuntime(
        tmp_path / "data",
        *("--nats-url", url, "--nats-user", "runtime", "--nats-password-file", str(tmp_path / "runtime.pw")),
        *("--nats-inbox-prefix", INBOX["runtime"]),
    ).start()
    try:
        with anyio.fail_after(90):
            # client: a command and its reply; a view query
            async with Client(url, auth=NatsAuth(user="client", password=passwords["client"])) as client:
                reply = await client.send("inventory", "XYZ-1", "receive", {"units": 5, "on": "2022-03-01"})
                assert (reply.result, reply.seq) == (5, 1)
                await client.send("post", "p1", "publish", {"author": "ann", "text": "hi"})

                async def counted() -> bool:
                    answer = await client.request("memoir.view.posts_by_author.get", b'{"key": "ann"}')
                    return bool(answer.result and answer.result["posts"] == 1)

                await eventually(counted, timeout=30, what="the runtime's view to count the post")

            async with Role(url, "client", passwords["client"]) as c:
                js = c.nc.jetstream(timeout=1)
                await c.nc.publish("memoir.events.inventory.XYZ-1", b'{"units": 1000}')
                await c.refused("memoir.events.inventory.XYZ-1")
                for call, subject in [
                    (js.stream_info("MEMOIR_EVENTS_INVENTORY"), "$JS.API.STREAM.INFO.MEMOIR_EVENTS_INVENTORY"),
                    (js.purge_stream("MEMOIR_EVENTS_INVENTORY"), "$JS.API.STREAM.PURGE.MEMOIR_EVENTS_INVENTORY"),
                    (js.delete_stream("MEMOIR_EVENTS_INVENTORY"), "$JS.API.STREAM.DELETE.MEMOIR_EVENTS_INVENTORY"),
                ]:
                    with pytest.raises((NatsError, TimeoutError)):
                        await call
                    await c.refused(subject)
                for subject in ("memoir.events.>", "_INBOX_memoir.>", "$JS.API.>"):
                    await c.nc.subscribe(subject)
                    await c.refused(subject)
                await c.nc.publish("memoir.admin.replay", b'{"view": "posts_by_author"}')
                await c.refused("memoir.admin.replay")

            # reader: consumes an event stream, and nothing else
            async with Role(url, "reader", passwords["reader"]) as r:
                js = r.nc.jetstream(timeout=1)
                sub = await js.pull_subscribe(
                    "memoir.events.inventory.>", durable="analytics", stream="MEMOIR_EVENTS_INVENTORY"
                )
                [msg] = await sub.fetch(1, timeout=5)
                assert msg.subject == "memoir.events.inventory.XYZ-1" and msg.headers["Memoir-Seq"] == "1"
                await msg.ack_sync()
                with pytest.raises((NatsError, TimeoutError)):
                    await r.nc.request("memoir.cmd.inventory.XYZ-1.receive", b'{"units": 1, "on": "2022-03-01"}', 1)
                await r.refused("memoir.cmd.inventory.XYZ-1.receive")
                for call, subject in [
                    (js.delete_stream("MEMOIR_EVENTS_INVENTORY"), "$JS.API.STREAM.DELETE.MEMOIR_EVENTS_INVENTORY"),
                    (js.stream_info("MEMOIR_DEADLETTER"), "$JS.API.STREAM.INFO.MEMOIR_DEADLETTER"),
                ]:
                    with pytest.raises((NatsError, TimeoutError)):
                        await call
                    await r.refused(subject)
                await r.nc.subscribe("_INBOX.>")  # the clients' replies
                await r.refused("_INBOX.>")

            # nothing the refused calls tried landed: one event, the stream intact, the entity as it was
            async with Role(url, "runtime", passwords["runtime"]) as admin:
                info = await admin.nc.jetstream().stream_info("MEMOIR_EVENTS_INVENTORY")
                assert info.state.messages == 1
            async with Client(url, auth=NatsAuth(user="client", password=passwords["client"])) as client:
                assert (await client.send("inventory", "XYZ-1", "get")).seq == 1
    finally:
        assert rt.stop() == 0
