"""Who may see the console: the HTTP API's own credential check, fed from a cookie or a header.

A browser cannot attach `Authorization` to a link or an `EventSource`, so the login form takes
the credential the API takes (the data dir's token, or a JWT) once, checks it with the API's
`Access.check`, and keeps it in a cookie that is `HttpOnly` (no script reads it), `SameSite=Strict`
(no other site's page sends it: no cross-site request forgery) and scoped to `/ui`. Every console
request is checked again the same way, so revoking the token or a JWT's expiry applies at once.
A request carrying `Authorization` is checked as the API checks it (scripts, curl). The console
answers only same-origin requests that name an origin: the API's `--http-cors-origin` list does
not extend to it.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

from .....model.errors import CommandError
from ..asgi import Scope, header
from ..guard import Access

COOKIE = "memoir_console"
MAX_AGE_S = 8 * 3600


def credential(scope: Scope) -> str | None:
    """The request's `Authorization` value, or one made from the console's cookie."""
    given = header(scope, b"authorization")
    if given is not None:
        return given
    raw = header(scope, b"cookie")
    if not raw:
        return None
    try:
        jar: SimpleCookie = SimpleCookie(raw)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return f"Bearer {morsel.value}" if morsel is not None and morsel.value else None


def admitted(access: Access, scope: Scope) -> bool:
    """Whether the request's credential passes the API's check (insecure: everyone does)."""
    if access.insecure:
        return True
    given = credential(scope)
    if given is None:
        return False
    try:
        access.check(given)
    except CommandError:
        return False
    return True


def same_origin(scope: Scope) -> bool:
    """A request naming an `Origin` must come from the console's own origin (its Host)."""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    host = header(scope, b"host")
    scheme = scope.get("scheme", "http")
    return host is not None and origin.rstrip("/").lower() == f"{scheme}://{host}".lower()


def set_cookie(token: str) -> bytes:
    return f"{COOKIE}={token}; Path=/ui; Max-Age={MAX_AGE_S}; HttpOnly; SameSite=Strict".encode()


def clear_cookie() -> bytes:
    return f"{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict".encode()
