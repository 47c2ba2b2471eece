"""A NATS client speaking the protocol byte by byte over TCP: it sends what a hostile publisher
can send (subjects, reply subjects and header blocks that are not UTF-8, oversized headers),
which nats-py's own publish refuses or encodes."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import nkeys  # type: ignore[import-untyped]


@dataclass
class Frame:
    """A message the server delivered: MSG or HMSG."""

    subject: bytes
    reply: bytes
    headers: bytes
    payload: bytes


@dataclass
class RawNats:
    stream: anyio.abc.ByteStream
    buf: bytearray = field(default_factory=bytearray)
    frames: list[Frame] = field(default_factory=list)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def pub(self, subject: bytes, payload: bytes, reply: bytes = b"", headers: bytes | None = None) -> None:
        """PUB (or HPUB with `headers`, the whole block: `NATS/1.0\\r\\n…\\r\\n\\r\\n`), bytes as given."""
        rep = b" " + reply if reply else b""
        if headers is None:
            await self.send(b"PUB %s%s %d\r\n%s\r\n" % (subject, rep, len(payload), payload))
        else:
            total = len(headers) + len(payload)
            await self.send(b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject, rep, len(headers), total, headers, payload))

    async def sub(self, subject: bytes, sid: int) -> None:
        await self.send(b"SUB %s %d\r\n" % (subject, sid))
        await self.ping()

    async def ping(self) -> None:
        """A round trip: the server has handled everything sent before; delivered messages are in `frames`."""
        await self.send(b"PING\r\n")
        while (line := await self._line()) != b"PONG":
            await self._handle(line)

    async def next_frame(self, timeout: float = 10.0) -> Frame:
        with anyio.fail_after(timeout):
            while not self.frames:
                await self._handle(await self._line())
        return self.frames.pop(0)

    async def _handle(self, line: bytes) -> None:
        op, _, rest = line.partition(b" ")
        if op == b"PING":
            await self.send(b"PONG\r\n")
        elif op in (b"MSG", b"HMSG"):
            args = rest.split()
            reply = args[2] if len(args) == (4 if op == b"MSG" else 5) else b""
            head = int(args[-2]) if op == b"HMSG" else 0
            block = await self._exactly(int(args[-1]) + 2)
            self.frames.append(Frame(args[0], reply, block[:head], block[head:-2]))
        elif op == b"-ERR":
            raise AssertionError(f"the server refused: {line!r}")

    async def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self.buf += await self.stream.receive()
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += await self.stream.receive()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


@contextlib.asynccontextmanager
async def raw_nats(port: int, *, nkey_seed_file: str | Path | None = None) -> AsyncIterator[RawNats]:
    """A raw connection to the nats-server on `port` (signing its nonce with a user nkey seed if given)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        raw = RawNats(stream)
        info = json.loads((await raw._line()).partition(b" ")[2])
        options: dict[str, Any] = {"verbose": False, "pedantic": False, "headers": True, "protocol": 1}
        if nkey_seed_file is not None:
            kp = nkeys.from_seed(bytearray(Path(nkey_seed_file).read_bytes().strip()))
            options["nkey"] = kp.public_key.decode()
            options["sig"] = base64.urlsafe_b64encode(kp.sign(info["nonce"].encode())).decode().rstrip("=")
        await raw.send(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
        await raw.ping()
        yield raw
