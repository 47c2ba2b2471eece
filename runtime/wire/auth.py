"""How to authenticate to NATS and secure the connection: one value for every connection Memoir makes.

`NatsAuth` holds at most one credential (user and password, token, nkey seed file, `.creds` file)
and the TLS material (CA, client certificate and key, server name). It is built from flags and
`MEMOIR_NATS_*` environment variables (`from_env`), checked when built — a missing file, a file
that is no credential, a key that does not match its certificate are one `ConfigError` naming the
file, before any connection is tried — and turned into nats-py's connect options by `options()`.

Secrets are best given as files (`--nats-creds`, `--nats-nkey`, `--nats-password-file`,
`--nats-token-file`): a flag's value is visible to every local user in `ps`. Neither the password
nor the token ever appears in `repr`, logs or errors.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..model.errors import ConfigError

# environment variable -> field; *_FILE variables are read into the field they name
ENV = {
    "MEMOIR_NATS_USER": "user",
    "MEMOIR_NATS_PASSWORD": "password",
    "MEMOIR_NATS_PASSWORD_FILE": "password_file",
    "MEMOIR_NATS_TOKEN": "token",
    "MEMOIR_NATS_TOKEN_FILE": "token_file",
    "MEMOIR_NATS_NKEY": "nkey_file",
    "MEMOIR_NATS_CREDS": "creds_file",
    "MEMOIR_NATS_CA": "tls_ca",
    "MEMOIR_NATS_CERT": "tls_cert",
    "MEMOIR_NATS_KEY": "tls_key",
    "MEMOIR_NATS_SERVER_NAME": "tls_server_name",
    "MEMOIR_NATS_INBOX_PREFIX": "inbox_prefix",
}

_CREDENTIALS = [{"user", "password", "password_file"}, {"token", "token_file"}, {"nkey_file"}, {"creds_file"}]
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class NatsAuth(msgspec.Struct, frozen=True, kw_only=True):
    """Credentials and TLS for one NATS connection; the empty value means none (the URL may still carry some)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_file: str | None = None  # a user nkey seed (`SU…`), as `nsc` or `nk -gen user` writes it
    creds_file: str | None = None  # a `.creds` file: a user JWT and its nkey seed (operator mode)
    tls_ca: str | None = None  # PEM file of the CA(s) that signed the server's certificate
    tls_cert: str | None = None  # client certificate (PEM), for servers that verify clients
    tls_key: str | None = None  # its private key (PEM)
    tls_server_name: str | None = None  # the name the server's certificate must carry, if not the URL's host
    # Where replies to this connection's requests go (nats-py's default `_INBOX`): a role of its own
    # (`_INBOX_memoir` for the runtime) lets the server's permissions keep other users from reading them.
    inbox_prefix: str | None = None

    def __repr__(self) -> str:
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not None}
        for secret in ("password", "token"):
            if secret in shown:
                shown[secret] = "***"
        return f"NatsAuth({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: str | None) -> NatsAuth:
        """`MEMOIR_NATS_*` variables, with flags (`overrides` not None, by field name) on top; checked."""
        env = os.environ if env is None else env
        raw: dict[str, str] = {field: env[var] for var, field in ENV.items() if env.get(var)}
        given = {k: v for k, v in overrides.items() if v is not None and v != ""}
        for group in _CREDENTIALS:  # a credential given by flag replaces the environment's other kinds
            if given.keys() & group:
                raw = {k: v for k, v in raw.items() if k in group or not any(k in other for other in _CREDENTIALS)}
        for key in given:  # a value by flag replaces the environment's file of it, and the other way round
            raw.pop(key.removesuffix("_file") if key.endswith("_file") else f"{key}_file", None)
        raw.update(given)
        for kind in ("password", "token"):
            path = raw.pop(f"{kind}_file", None)
            if path is not None:
                if kind in raw:
                    raise ConfigError(f"NATS {kind}: give it or a {kind} file, not both")
                raw[kind] = _read(path, f"NATS {kind} file").strip()
                if not raw[kind]:
                    raise ConfigError(f"NATS {kind} file {path} is empty")
        unknown = set(raw) - set(cls.__struct_fields__)
        if unknown:
            raise ConfigError(f"unknown NATS connection option(s): {sorted(unknown)}")
        auth = cls(**raw)
        auth.check()
        return auth

    def method(self) -> str | None:
        """The credential, named for messages (never its value)."""
        if self.creds_file:
            return f"credentials file {self.creds_file}"
        if self.nkey_file:
            return f"nkey seed file {self.nkey_file}"
        if self.token:
            return "token"
        if self.user:
            return f"user {self.user!r} and password"
        return None

    def secrets(self) -> list[str]:
        """What must never be shown: scrubbed from any text that might quote it."""
        return [s for s in (self.password, self.token) if s]

    @property
    def tls(self) -> bool:
        return any((self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name))

    def check(self) -> None:
        """ConfigError naming what is wrong: two credentials, half a pair, a file that is not what it should be."""
        given = [m for m, on in (("user/password", self.user or self.password), ("token", self.token),
                                 ("nkey", self.nkey_file), ("creds", self.creds_file)) if on]  # fmt: skip
        if len(given) > 1:
            raise ConfigError(f"give one NATS credential, not {' and '.join(given)}")
        if bool(self.user) != bool(self.password):
            raise ConfigError(
                "a NATS user needs its password and a password its user (--nats-user, --nats-password-file)"
            )
        if self.creds_file:
            _check_creds(self.creds_file)
        if self.nkey_file:
            _check_seed(_read(self.nkey_file, "NATS nkey seed file"), f"NATS nkey seed file {self.nkey_file}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(
                "a TLS client certificate needs its key and a key its certificate (--nats-cert, --nats-key)"
            )
        if self.tls:
            self.ssl_context()
        if self.inbox_prefix is not None and not _TOKEN.match(self.inbox_prefix):
            raise ConfigError(f"NATS inbox prefix {self.inbox_prefix!r} must be subject tokens (letters, digits, _ -)")

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context: the system's CAs, or only `tls_ca`; the client certificate if given."""
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the NATS TLS CA file {self.tls_ca}: {_reason(exc)}") from None
        if self.tls_cert and self.tls_key:
            try:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load the NATS TLS client certificate {self.tls_cert} (key {self.tls_key}): {_reason(exc)}"
                ) from None
        return ctx

    def options(self) -> dict[str, Any]:
        """nats-py's `connect` keyword arguments for this credential and TLS."""
        opts: dict[str, Any] = {}
        if self.user:
            opts.update(user=self.user, password=self.password)
        if self.token:
            opts["token"] = self.token
        if self.nkey_file:
            opts["nkeys_seed"] = self.nkey_file
        if self.creds_file:
            opts["user_credentials"] = self.creds_file
        if self.tls:
            opts["tls"] = self.ssl_context()
        if self.tls_server_name:
            opts["tls_hostname"] = self.tls_server_name
        if self.inbox_prefix:
            opts["inbox_prefix"] = self.inbox_prefix
        return opts


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} {path}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).split(" (_ssl.c", 1)[0] or type(exc).__name__


def _check_seed(text: str, what: str) -> None:
    import nkeys  # type: ignore[import-untyped]  # nats-py's optional dependency, in memoir's

    seed = text.strip()
    try:
        if not seed.startswith("SU"):
            raise ValueError("not a user seed")
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception:  # noqa: BLE001 - nkeys raises its own types and binascii/nacl errors
        raise ConfigError(f"{what} holds no valid NATS user nkey seed (SU…)") from None


def _check_creds(path: str) -> None:
    """A `.creds` file: a `NATS USER JWT` block and a `USER NKEY SEED` block (nsc writes both)."""
    text = _read(path, "NATS credentials file")
    blocks: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        for name in ("NATS USER JWT", "USER NKEY SEED"):
            if f"BEGIN {name}" in line and i + 1 < len(lines):
                blocks[name] = lines[i + 1].strip()
    if not blocks.get("NATS USER JWT", "").startswith("eyJ"):
        raise ConfigError(f"NATS credentials file {path} holds no user JWT (expected a .creds file as nsc writes it)")
    if "USER NKEY SEED" not in blocks:
        raise ConfigError(
            f"NATS credentials file {path} holds no user nkey seed (expected a .creds file as nsc writes it)"
        )
    _check_seed(blocks["USER NKEY SEED"], f"NATS credentials file {path}")
