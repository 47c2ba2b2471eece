"""The HTTP API's operations routes: health probes and dead letters.

- `GET /healthz`: 200 while the process serves HTTP; `GET /readyz`: 200 once it is connected to
  NATS and taking commands (in a cluster: a live member), else 503. Both answer without a
  credential, as the metrics port's do, for orchestrators' probes; they say nothing else.
- `GET /deadletters/{consumer}` (`?after=SEQ&limit=N`): the consumer's parked events;
  `GET /deadletters/{consumer}/{seq}`: one in full; `POST /deadletters/{consumer}/replay` and
  `POST /deadletters/{consumer}/{seq}/replay`: handle every parked event (or one) again;
  `DELETE /deadletters/{consumer}` and `DELETE /deadletters/{consumer}/{seq}`: purge. Each is the
  admin request `memoir deadletters` sends (`dead_letter_admin.py`), its answer the body, behind
  the same credential as every other route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ....model.errors import ErrorCode
from ....wire.protocol import decode_answer
from ..dead_letter_admin import REPLAY_SECONDS
from .asgi import Headers
from .request import HttpError, Query, segment
from .status import status_of

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from .._service import Service

Answer = tuple[int, bytes, Headers]  # as `app.Answer`: status, body, extra headers


class HttpApi(Protocol):
    """What these routes use of the HTTP API (`app.HttpApi`), so this module never imports it back."""

    service: Service
    prefix: str
    nc: NATS
    timeout: float

    def answer(self, status: int, body: bytes, code: str = "") -> Answer: ...


PROBES = ("healthz", "readyz")
TEXT = [(b"content-type", b"text/plain")]


def probe(api: HttpApi, name: str) -> Answer:
    """`/healthz` or `/readyz`, as plain text."""
    if name == "healthz":
        return 200, b"ok\n", TEXT
    check = getattr(api, "ready", None)  # set by `memoir run`: the metrics' readiness (the NATS door too)
    ready = check() if check is not None else _connected(api)
    return (200, b"ready\n", TEXT) if ready else (503, b"not ready\n", TEXT)


def _connected(api: HttpApi) -> bool:
    svc = api.service
    if svc.nc is None or not svc.nc.is_connected:
        return False
    return svc.cluster is None or svc.cluster.member_id in svc.cluster.membership.live()


def dead_letter_routes(api: HttpApi, rest: list[str], query: Query) -> dict[str, Callable[[], Awaitable[Answer]]]:
    """The methods `/deadletters/…` answers at `rest` (the segments after it)."""
    match rest:
        case [consumer]:
            return {
                "GET": lambda: _ask(api, "list", consumer, _page(query)),
                "DELETE": lambda: _ask(api, "purge", consumer, {}),
            }
        case [consumer, "replay"]:
            return {"POST": lambda: _ask(api, "replay", consumer, {})}
        case [consumer, seq]:
            return {
                "GET": lambda: _ask(api, "show", consumer, {"seq": _seq(seq)}),
                "DELETE": lambda: _ask(api, "purge", consumer, {"seq": _seq(seq)}),
            }
        case [consumer, seq, "replay"]:
            return {"POST": lambda: _ask(api, "replay", consumer, {"seq": _seq(seq)})}
    return {}


def _page(query: Query) -> dict[str, Any]:
    return {"after": query.integer("after", 0, 0, 2**63), "limit": query.integer("limit", 100, 1, 1000)}


def _seq(raw: str) -> int:
    text = segment(raw, "seq")
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise HttpError(ErrorCode.INVALID, f"a dead letter's seq is a positive integer, not {text[:32]!r}")
    return int(text)


async def _ask(api: HttpApi, op: str, raw_consumer: str, body: dict[str, Any]) -> Answer:
    consumer = segment(raw_consumer, "consumer")
    subject = f"{api.prefix}.admin.deadletters.{op}"
    try:
        payload = msgspec.json.encode({"consumer": consumer, **body})
        timeout = max(api.timeout, REPLAY_SECONDS) if op == "replay" else api.timeout
        msg = await api.nc.request(subject, payload, timeout=timeout)
    except (NoRespondersError, NatsTimeoutError, NatsError):
        raise HttpError(ErrorCode.UNAVAILABLE, f"no answer on {subject}; retry") from None
    answer = decode_answer(msg.data)
    if not answer.ok:
        code = answer.error.code if answer.error is not None else "internal"
        return api.answer(404 if code == "unknown_consumer" else status_of(code), msg.data, code)
    return 200, msg.data, []
