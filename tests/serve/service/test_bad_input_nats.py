"""Bad input at the NATS edge, byte by byte, against a real `memoir run` on a real nats-server that
takes 16 MB messages: each row is answered with its code (or dropped, with a log line, when no
reply can be read), the reply carries no request header back, nothing is stored, the process
keeps serving and its memory stays bounded."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support.process import RunningRuntime
from support.waiting import eventually
from wire.raw import Frame, RawNats, raw_nats

from runtime import SqliteJournal
from runtime.serve.service.embedded_nats import find_binary, free_port

pytestmark = pytest.mark.anyio

# memoir run idles near 100 MB and peaks near 130 MB under the flood below; before its buffers were
# bounded, that flood took it to 550 MB (and 60 such messages to 847 MB).
RSS_LIMIT_MB = 300
GOOD = b'{"units": 1, "on": "2022-03-01"}'
CMD = b"memoir.cmd.inventory.A.receive"


def _headers(*lines: bytes) -> bytes:
    return b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


DROPPED = "dropped"
ROWS: list[tuple[str, bytes, bytes, bytes | None, bytes, str, str]] = [
    # name, subject, reply, header block, payload, code (or DROPPED), words in the message
    ("subject not UTF-8", b"memoir.cmd.inventory.X\xff\xfe1.get", b"r.1", None, b"{}", "invalid", "subject"),
    ("subject and reply not UTF-8", b"memoir.cmd.inventory.X\xff.get", b"r.\xff\xfe", None, b"{}", DROPPED, ""),
    ("reply not UTF-8", CMD, b"r.\xfe\xff", None, GOOD, DROPPED, ""),
    ("status line not UTF-8", CMD, b"r.1", b"NATS/1.0 \xff\xfe\xfd\r\n\r\n", GOOD, DROPPED, ""),
    (
        "header value not UTF-8",
        CMD,
        b"r.1",
        _headers(b"Memoir-Correlation-Id: \xc3("),
        GOOD,
        "invalid",
        "header Memoir-Correlation-Id is not valid UTF-8",
    ),
    (
        "command id not UTF-8",
        CMD,
        b"r.1",
        _headers(b"Memoir-Command-Id: \xff\xfe"),
        GOOD,
        "invalid",
        "header Memoir-Command-Id is not valid UTF-8",
    ),
    (
        "command id with control characters",
        CMD,
        b"r.1",
        _headers(b"Memoir-Command-Id: a\x01b"),
        GOOD,
        "invalid",
        "header Memoir-Command-Id must be 1-256 printable characters",
    ),
    (
        "huge header (100 KB)",
        CMD,
        b"r.1",
        _headers(b"Authorization: Bearer " + b"t" * 100_000),
        GOOD,
        "invalid",
        "the limit is 16384",
    ),
    (
        "entity id not UTF-8 once percent-decoded",
        b"memoir.cmd.inventory.X%FF%FE1.receive",
        b"r.1",
        None,
        GOOD,
        "invalid",
        "is not valid UTF-8 once percent-decoded",
    ),
    (
        "entity id with control characters",
        b"memoir.cmd.inventory.a%01b.receive",
        b"r.1",
        None,
        GOOD,
        "invalid",
        "control characters",
    ),
    ("payload not JSON", CMD, b"r.1", None, b"units=5", "invalid", "not valid JSON"),
    ("payload not UTF-8", CMD, b"r.1", None, b'{"units": 5, "on": "\xff"}', "invalid", "not valid UTF-8"),
    ("payload 2 MB", CMD, b"r.1", None, b" " * (2 << 20) + GOOD, "invalid", "bytes, the limit is 1048576"),
    ("payload 15 MB", CMD, b"r.1", None, b" " * (15 << 20) + GOOD, "invalid", "bytes, the limit is 1048576"),
    ("unknown entity type", b"memoir.cmd.spaceship.A.launch", b"r.1", None, b"{}", "unknown_entity_type", "spaceship"),
    ("unknown command", b"memoir.cmd.inventory.A.explode", b"r.1", None, b"{}", "unknown_command", "explode"),
    ("too few tokens", b"memoir.cmd.inventory.receive", b"r.1", None, GOOD, "invalid", "<prefix>.cmd.<type>"),
]


class Edge:
    """`memoir run` on its own nats-server (max_payload 16 MB), no credentials."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        conf = directory / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\nmax_payload: 16MB\n'
            f'jetstream {{ store_dir: "{(directory / "store").as_posix()}" }}\n'
        )
        self.nats = subprocess.Popen(
            [find_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.data = directory / "data"
        self.runtime = RunningRuntime(self.data, "--nats-url", f"nats://127.0.0.1:{self.port}").start()

    @property
    def log(self) -> str:
        return (self.data.parent / f"{self.data.name}.log").read_text()

    def rss_mb(self) -> float:
        assert self.runtime.proc is not None
        status = Path(f"/proc/{self.runtime.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

    def close(self) -> None:
        if self.runtime.proc is not None:
            self.runtime.stop()
        self.nats.terminate()
        self.nats.wait(30)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    e = Edge(tmp_path_factory.mktemp("edge"))
    try:
        yield e
    finally:
        e.close()


async def _position(edge: Edge) -> int:
    async with SqliteJournal(edge.data / "journal.db") as journal:
        return await journal.last_position()


async def _good(raw: RawNats) -> list[Frame]:
    """A good command, answered `ok`; the frames that came before its answer (answers to what was sent before)."""
    await raw.pub(CMD, GOOD, b"r.good")
    before: list[Frame] = []
    while (frame := await raw.next_frame(30)).subject != b"r.good":
        before.append(frame)
    assert _answer(frame)["ok"] is True, frame
    return before


def _answer(frame: Frame) -> dict[str, object]:
    assert frame.headers in (b"", b"NATS/1.0\r\n\r\n"), f"a reply carries request headers back: {frame.headers[:80]!r}"
    return dict(json.loads(frame.payload))


@pytest.mark.parametrize(
    ("name", "subject", "reply", "headers", "payload", "code", "words"), ROWS, ids=[r[0] for r in ROWS]
)
async def test_bad_input_over_nats(
    edge: Edge, name: str, subject: bytes, reply: bytes, headers: bytes | None, payload: bytes, code: str, words: str
) -> None:
    async with raw_nats(edge.port) as raw:
        await raw.sub(b"r.>", 1)
        before = await _position(edge)
        await raw.pub(subject, payload, reply, headers)
        if code != DROPPED:
            answer = _answer(await raw.next_frame(20))
            assert answer["ok"] is False, answer
            error = answer["error"]
            assert isinstance(error, dict)
            assert (error["code"], words in error["message"]) == (code, True), error
            assert await _position(edge) == before, "a bad request stores nothing"
        # Still serving: the next command is answered (a dropped message passed the read loop before it)...
        assert await _good(raw) == [], "a dropped message was answered"
        # ...its one event the only one stored, and memory stays bounded.
        assert await _position(edge) == before + 1
        assert edge.rss_mb() < RSS_LIMIT_MB
    if code == DROPPED:
        await eventually(lambda: _logged(edge, "NATS message dropped"), 10, "the drop logged")


async def _logged(edge: Edge, words: str) -> bool:
    return words in edge.log


async def test_replies_carry_no_request_headers(edge: Edge) -> None:
    """Clients share `_INBOX.>` on the shipped roles: an echoed bearer token is one any of them can read."""
    async with raw_nats(edge.port) as raw:
        await raw.sub(b"r.>", 1)
        secret = b"Authorization: Bearer eyJ-secret-token"
        await raw.pub(CMD, GOOD, b"r.1", _headers(secret, b"X-Pad: " + b"p" * 10_000))
        frame = await raw.next_frame(20)
        assert secret not in frame.headers and b"X-Pad" not in frame.headers
        assert _answer(frame)["ok"] is True
        # the same for view queries and admin requests
        await raw.pub(b"memoir.admin.replay", b'{"view": "nope"}', b"r.2", _headers(secret))
        assert _answer(await raw.next_frame(20))["ok"] is False


async def test_a_flood_of_big_messages_leaves_memory_bounded(edge: Edge) -> None:
    """48 concurrent 15 MB requests (720 MB): each answered `invalid`, or dropped as a slow consumer
    (by nats-py's bounded buffer, or by nats-server, which then closes the runtime's connection:
    it reconnects), never held."""
    async with raw_nats(edge.port) as raw:
        await raw.sub(b"r.>", 1)
        big = b" " * (15 << 20) + GOOD
        peak = 0.0
        for i in range(48):
            await raw.pub(CMD, big, b"r.flood.%d" % i)
            peak = max(peak, edge.rss_mb())
        frames = await _served_again(raw)
        peak = max(peak, edge.rss_mb())
        answers = [_answer(f) for f in frames if f.subject.startswith(b"r.flood.")]
        assert {a["error"]["code"] for a in answers} <= {"invalid"}, answers  # type: ignore[index]
        assert peak < RSS_LIMIT_MB, peak


async def _served_again(raw: RawNats) -> list[Frame]:
    """A good command sent until one is answered `ok`, each try with its own reply subject: one sent
    while the runtime reconnects is lost. The frames that came meanwhile."""
    seen: list[Frame] = []
    for attempt in range(12):
        reply = b"r.good.%d" % attempt
        await raw.pub(CMD, GOOD, reply)
        with anyio.move_on_after(5):
            while (frame := await raw.next_frame(10)).subject != reply:
                seen.append(frame)
            assert _answer(frame)["ok"] is True, frame
            return seen
    raise AssertionError("the runtime did not serve again within a minute of the flood")
