"""The console's ASGI app: `/ui…` is served here, everything else by the API it is mounted beside.

Mounted outside the API's Origin guard on purpose: the guard refuses every origin not configured
for CORS, the console's own included (a browser names it on each form post). The console instead
refuses any origin but its own (`auth.same_origin`), then asks for the API's credential.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING

import structlog

from .....model.errors import CommandError
from ...metrics import Metrics
from ..asgi import App, Headers, Receive, Scope, Send
from ..request import Query
from ..sse import tail
from . import auth
from .entity import entity_page, history_row
from .html import Html, esc, notice, page, url
from .operations import (
    cluster_page,
    dead_letters_page,
    metrics_page,
    replay,
    view_page,
    views_page,
    workflows_page,
)
from .parts import ConsolePart, Params

if TYPE_CHECKING:
    from ..app import HttpApi


log = structlog.get_logger("memoir.console")

MAX_FORM = 16 * 1024
HTML = b"text/html; charset=utf-8"
SECURITY: Headers = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
STATIC = {
    "console.css": b"text/css; charset=utf-8",
    "console.js": b"text/javascript; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
Page = Callable[[ConsolePart, Params], Awaitable[tuple[str, Html]]]
PAGES: dict[str, Page] = {
    "entity": entity_page,
    "views": views_page,
    "workflows": workflows_page,
    "deadletters": dead_letters_page,
    "cluster": cluster_page,
    "metrics": metrics_page,
}


class Console:
    """The web console of one HTTP API (its service, credential check and live tail)."""

    def __init__(self, api: HttpApi, metrics: Metrics | None = None) -> None:
        self.api = api
        self.metrics = metrics or Metrics(api.service)

    def mount(self, inner: App) -> App:
        """`inner` for every path but `/ui…`."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] == "http" and (path == "/ui" or path.startswith("/ui/")):
                await self(scope, receive, send)
            else:
                await inner(scope, receive, send)

        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        segs = scope["path"].split("/")[2:]
        method = scope["method"]
        try:
            if not auth.same_origin(scope):
                await respond(send, 403, b"cross-origin requests to the console are refused", b"text/plain")
                return
            if segs[:1] == ["static"] and method == "GET":
                await self.static(send, segs[1:])
                return
            if segs == ["login"]:
                await self.login(scope, receive, send)
                return
            if not auth.admitted(self.api.access, scope):
                await respond(send, 303, b"", HTML, [(b"location", b"/ui/login")])
                return
            await self.route(scope, receive, send, segs, method)
        except CommandError as exc:
            body = page("Not possible", Html(notice(str(exc), error=True)))
            await respond(send, 400 if str(exc.code) != "unavailable" else 503, body, HTML)
        except Exception as exc:  # a page that fails says so; the process serves on
            if scope["path"].startswith("/ui/live/"):
                raise  # the tail had started its answer: nothing more can be sent
            log.error("console page failed", path=scope["path"][:200], exc_info=exc)
            body = page("Failed", Html(notice(f"this page failed: {type(exc).__name__}", error=True)))
            await respond(send, 500, body, HTML)

    async def route(self, scope: Scope, receive: Receive, send: Send, segs: list[str], method: str) -> None:
        params = Params(scope.get("query_string", b""))
        match segs:
            case [] | [""]:
                await respond(send, 303, b"", HTML, [(b"location", b"/ui/entity")])
            case ["logout"] if method == "POST":
                await respond(send, 303, b"", HTML, [(b"location", b"/ui/login"), (b"set-cookie", auth.clear_cookie())])
            case ["deadletters", "replay"] if method == "POST":
                message = await replay(self, Params(await read_form(receive)).values)
                where = url("/ui/deadletters", done=message).encode()  # post, redirect, get: a reload repeats nothing
                await respond(send, 303, b"", HTML, [(b"location", where)])
            case ["views", name] if method == "GET":
                title, body = await view_page(self, params, name)
                await respond(send, 200, page(title, body, current="/ui/views"), HTML)
            case ["row"] if method == "GET":
                await respond(send, 200, await history_row(self, params), HTML)
            case ["live", entity_type] if method == "GET":
                self.api.model(entity_type)
                await tail(self.api, scope, receive, send, entity_type, Query(b""))
            case [name] if name in PAGES and method == "GET":
                title, body = await PAGES[name](self, params)
                await respond(send, 200, page(title, body, current=f"/ui/{name}"), HTML)
            case _:
                missing = notice(f"no console page {scope['path'][:100]!r}", error=True)
                await respond(send, 404, page("Not found", missing), HTML)

    async def login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET: the form. POST: check the credential as the API does; keep it in the cookie."""
        error = Html("")
        if scope["method"] == "POST":
            token = Params(await read_form(receive)).text("token", "").strip()
            token = token.removeprefix("Bearer ").strip()
            ok = bool(token) and set(token) <= TOKEN_CHARS and len(token) <= 8192
            if ok:
                try:
                    self.api.access.check(f"Bearer {token}")
                except CommandError:
                    ok = False
            if ok:
                await respond(
                    send, 303, b"", HTML, [(b"location", b"/ui/entity"), (b"set-cookie", auth.set_cookie(token))]
                )
                return
            error = notice("That credential was refused.", error=True)
        where = "the data dir's http.token" if self.api.access.token is not None else "a JWT"
        form = (
            f"{error}<p>Sign in with the credential the HTTP API takes: {esc(where)}.</p>"
            '<form class="inline" method="post" action="/ui/login">'
            '<label>Token<input type="password" name="token" autocomplete="current-password"'
            " required autofocus></label>"
            '<button type="submit">Sign in</button></form>'
        )
        await respond(send, 401 if error else 200, page("Sign in", Html(form)), HTML)

    async def static(self, send: Send, segs: list[str]) -> None:
        if len(segs) != 1 or segs[0] not in STATIC:
            await respond(send, 404, b"not found", b"text/plain")
            return
        data = resources.files(__package__).joinpath("static", segs[0]).read_bytes()
        await respond(send, 200, data, STATIC[segs[0]], [(b"cache-control", b"max-age=300")])


async def read_form(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM:
            raise CommandError("too_large", f"a console form is at most {MAX_FORM} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    given = {k for k, _ in extra}
    headers += [h for h in SECURITY if h[0] not in given] + list(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
