"""Who may call the HTTP API at all, decided before any route runs.

- Origins: a browser names the page that sends a request in `Origin`. A request with an Origin
  not configured (`--http-cors-origin`) is refused with 403 before anything else, so a web page
  can neither write (a `text/plain` POST needs no preflight) nor read. Configured origins get
  CORS answers (preflights included) from starlette's `CORSMiddleware`; requests without an
  Origin (curl, servers, the CLI) are not cross-origin and pass.
- Credentials (`Access`): the data dir's token (`StaticToken`), or bearer JWTs (`Verifier`),
  or nothing when the operator said `--http-insecure`.
- Commands are JSON: any other `Content-Type` is 415, so an HTML form cannot post one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ....model.errors import CommandError, ConfigError, ErrorCode, Forbidden, Unauthorized
from ....wire.protocol import encode_error
from ..auth import StaticToken, Verifier
from .asgi import App, Receive, Scope, Send, header

_MEDIA_TYPE = re.compile(r"[\w.+-]{1,40}/[\w.+-]{1,60}( *; *charset=[\w-]{1,20})?", re.ASCII)
ALLOWED_HEADERS = [  # request headers a configured origin may send
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "Memoir-Command-Id",
    "Memoir-Correlation-Id",
    "Memoir-Timeout-Ms",
    "traceparent",
]


@dataclass(frozen=True)
class Access:
    """How requests prove who they are: exactly one of a token, a JWT verifier, or insecure."""

    token: StaticToken | None = None
    verifier: Verifier | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.token is not None) + (self.verifier is not None) + self.insecure != 1:
            raise ConfigError("the HTTP API needs one of: a token, JWT keys, or insecure=True (explicitly)")

    @property
    def forwards_authorization(self) -> bool:
        """JWTs go on to the NATS door, which checks them per command; the data dir's token stays here."""
        return self.verifier is not None

    def check(self, authorization: str | None) -> None:
        """Raise `unauthorized` unless the request may go on."""
        if self.token is not None:
            self.token.verify(authorization)
        elif self.verifier is not None:
            if authorization is None:
                raise Unauthorized(ErrorCode.UNAUTHORIZED, "this API needs 'Authorization: Bearer <JWT>'")
            self.verifier.verify(authorization)


def origin_guard(app: App, origins: Sequence[str]) -> App:
    """`app` behind the Origin check, and behind CORS if any origin is configured."""
    allowed = frozenset(o.rstrip("/").lower() for o in origins)
    inner = app
    if allowed:
        from starlette.middleware.cors import CORSMiddleware

        inner = CORSMiddleware(
            app, allow_origins=sorted(allowed), allow_methods=["GET", "POST"], allow_headers=ALLOWED_HEADERS
        )

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        origin = header(scope, b"origin")
        if scope["type"] == "http" and origin is not None and origin.lower() not in allowed:
            # the Origin is not quoted back: replies never echo request headers
            error = Forbidden(
                ErrorCode.FORBIDDEN, "cross-origin requests are refused unless --http-cors-origin names the origin"
            )
            body = encode_error(error)
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await inner(scope, receive, send)

    return guarded


def check_json(content_type: str | None, body: bytes) -> None:
    """A command's body is JSON: `415 unsupported_media_type` naming what came instead."""
    if content_type is None:
        if body:
            raise CommandError("unsupported_media_type", "a command body needs 'Content-Type: application/json'")
        return
    media, _, params = content_type.partition(";")
    charset = dict(_param(p) for p in params.split(";") if "=" in p).get("charset", "utf-8")
    if media.strip().lower() != "application/json" or charset.lower() not in ("utf-8", "utf8"):
        # named only when it is a media type: replies do not carry arbitrary header bytes back
        named = repr(content_type) if _MEDIA_TYPE.fullmatch(content_type) else "another Content-Type"
        raise CommandError("unsupported_media_type", f"commands take 'application/json' (UTF-8), not {named}")


def _param(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip().lower(), value.strip().strip('"')
