"""Verified callers: bearer JWTs checked with PyJWT at the front door, before any entity sees them.

`Verifier.verify(authorization)` takes the `Authorization` header as it arrived (any front
door passes it on as is: the NATS door, an HTTP gateway) and returns the `Caller`,
`ANONYMOUS` when there is none, or raises `unauthorized` saying what was wrong with the token
(expired, not yet valid, audience, issuer, signature, algorithm, size) without echoing it.

Decisions:
- Algorithms follow from the configured keys, never from the token: an HMAC secret admits
  HS256 (and HS384/HS512 when it is long enough for them), an RSA key RS*/PS*, an EC key
  the one ES* of its curve, an Ed25519/Ed448 key EdDSA, a JWKS entry its `alg` if it has
  one. So `alg: none` and the HS/RS confusion (a public key used as an HMAC secret) cannot
  happen: the header's `alg` only picks among keys, and PyJWT is told that one algorithm.
- `exp` and `sub` are required (a token that never expires is a password); `aud` and `iss`
  when configured. `leeway` (seconds) absorbs clock skew between issuer and runtime.
- A token's `kid` selects among keys that have one; keys without a `kid` are tried in turn.
- Verified tokens are cached by their SHA-256 until their `exp` (bounded, oldest out first):
  one signature check per token, not per command. The claims cannot change under a
  signature, so the cache answers exactly what verifying again would, until expiry; keying
  by digest keeps bearer tokens out of the process's long-lived memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...model.access import ANONYMOUS, Caller
from ...model.errors import ConfigError, ErrorCode, Unauthorized

if TYPE_CHECKING:  # PyJWT and cryptography load with the first key: `import runtime` stays light
    import jwt

MIN_SECRET = 32  # bytes: RFC 7518 §3.2, an HMAC key at least as long as the hash
MAX_HEADER = 8192  # bytes of `Authorization` accepted by default
LEEWAY = 30.0  # seconds of clock skew allowed on exp, nbf and iat

_EC_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


@dataclass(frozen=True)
class VerificationKey:
    """One key a token may be signed with, the algorithms it admits, and its key id if it has one."""

    key: Any  # HMAC secret bytes or a `cryptography` public key
    algorithms: frozenset[str]
    kid: str | None = None

    @classmethod
    def hmac(cls, secret: bytes, kid: str | None = None) -> VerificationKey:
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"the JWT HMAC secret is {len(secret)} bytes; it must be at least {MIN_SECRET}")
        algs = {"HS256"} | ({"HS384"} if len(secret) >= 48 else set()) | ({"HS512"} if len(secret) >= 64 else set())
        return cls(secret, frozenset(algs), kid)

    @classmethod
    def public(cls, key: Any, kid: str | None = None, alg: str | None = None) -> VerificationKey:
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

        if isinstance(key, rsa.RSAPublicKey):
            algs = _RSA_ALGS
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALG:
            algs = frozenset({_EC_ALG[key.curve.name]})
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            algs = frozenset({"EdDSA"})
        else:
            raise ConfigError(f"unsupported JWT key type {type(key).__name__} (use RSA, EC P-256/384/521 or Ed25519)")
        if alg is not None:
            if alg not in algs:
                raise ConfigError(f"JWT key {kid or ''}: algorithm {alg!r} does not fit a {type(key).__name__}")
            algs = frozenset({alg})
        return cls(key, algs, kid)


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to pick a key: PyJWT checks the whole token after.

    Read here rather than with `jwt.get_unverified_header`, which decodes the whole token (a
    third of a fresh token's verification) for the two fields needed.
    """
    segment = token.split(".", 1)[0] if token.count(".") == 2 else ""
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))) if segment else None
    except (ValueError, binascii.Error):
        header = None
    if not isinstance(header, dict):
        raise _bad("not a JWT (expected three base64url segments with a JSON header)")
    return header


def _short(value: Any) -> Any:
    """A header field as a reply may quote it: strings cut short, so a reply never carries a payload back."""
    return value[:40] if isinstance(value, str) else value if value is None else type(value).__name__


def _bad(reason: str) -> Unauthorized:
    return Unauthorized(ErrorCode.UNAUTHORIZED, f"bad bearer token: {reason}")


class Verifier:
    """Checks bearer JWTs against configured keys; see the module docstring for the rules."""

    def __init__(
        self,
        keys: Sequence[VerificationKey],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = LEEWAY,
        max_header: int = MAX_HEADER,
        cache_size: int = 10_000,
    ) -> None:
        if not keys:
            raise ConfigError("a JWT verifier needs at least one key (secret, public key or JWKS)")
        if leeway < 0 or max_header < 16 or cache_size < 0:
            raise ConfigError("JWT leeway must be >= 0, max header >= 16 bytes, cache size >= 0")
        self.keys = list(keys)
        self.algorithms = frozenset().union(*(k.algorithms for k in self.keys))
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.max_header = max_header
        self.cache_size = cache_size
        self._cache: dict[bytes, tuple[Caller, float]] = {}  # sha256(token) -> (caller, usable until: unix time)
        self._require = ["exp", "sub"] + (["aud"] if audience else []) + (["iss"] if issuer else [])

    def verify(self, authorization: Any) -> Caller:
        """The caller an `Authorization` header value names: `ANONYMOUS` if None, else verified or `unauthorized`."""
        if authorization is None:
            return ANONYMOUS
        value = str(authorization)  # nats-py hands non-ASCII header values over as email.header.Header
        if len(value) > self.max_header:
            raise _bad(f"the Authorization header is {len(value)} bytes, the limit is {self.max_header}")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _bad("the Authorization header must be 'Bearer <JWT>'")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._cache[digest]
        caller, exp = self._decode(token)
        if self.cache_size:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[digest] = (caller, exp + self.leeway)
        return caller

    def _decode(self, token: str) -> tuple[Caller, float]:
        import jwt

        header = _header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            accepted = ", ".join(sorted(self.algorithms))
            raise _bad(f"algorithm {_short(alg)!r} is not accepted here (accepted: {accepted})")
        candidates = [k for k in self.keys if alg in k.algorithms and (k.kid is None or kid is None or k.kid == kid)]
        if not candidates:
            raise _bad(f"no configured key has id {_short(kid)!r} for {alg}")
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": self._require, "verify_aud": self.audience is not None},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as exc:
                raise _bad(self._reason(exc)) from None
            return Caller(subject=claims["sub"], claims=claims), float(claims["exp"])
        raise _bad("signature does not verify with any configured key (forged, or signed by another key)")

    def _reason(self, exc: jwt.InvalidTokenError) -> str:
        import jwt

        if isinstance(exc, jwt.ExpiredSignatureError):
            return "expired"
        if isinstance(exc, jwt.ImmatureSignatureError):
            return "not yet valid (nbf is in the future)"
        if isinstance(exc, jwt.InvalidAudienceError):
            return f"wrong audience (expected {self.audience!r})"
        if isinstance(exc, jwt.InvalidIssuerError):
            return f"wrong issuer (expected {self.issuer!r})"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"the {exc.claim!r} claim is missing"
        if isinstance(exc, jwt.InvalidIssuedAtError):
            return "issued in the future (iat)"
        if isinstance(exc, jwt.DecodeError):
            return f"malformed ({exc})"
        return f"invalid ({exc})"


class StaticToken:
    """The one bearer token of a data dir (`memoir run --http-port` without JWT keys), checked in constant time.

    It names no caller: whoever holds it is the data dir's owner, so the caller is `ANONYMOUS` to
    access rules, as a command over the owner's NATS credential is. Unlike `Verifier.verify`, no
    token is refused: the HTTP gateway admits nobody without it.
    """

    def __init__(self, token: str) -> None:
        if len(token) < MIN_SECRET:
            raise ConfigError(f"the HTTP token is {len(token)} characters; it must be at least {MIN_SECRET}")
        self._digest = hashlib.sha256(token.encode()).digest()

    def verify(self, authorization: Any) -> Caller:
        """`ANONYMOUS` if the header is `Bearer <the token>`, else `unauthorized` (the token never echoed)."""
        if authorization is None:
            raise Unauthorized(ErrorCode.UNAUTHORIZED, "this API needs 'Authorization: Bearer <token>'")
        scheme, _, token = str(authorization).strip().partition(" ")
        # digests compared, so neither the time nor an early length mismatch tells how much was right
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._digest):
            raise Unauthorized(ErrorCode.UNAUTHORIZED, "bad bearer token: not this server's token")
        return ANONYMOUS


# -- configuration -----------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path!r}: {exc.strerror}") from None


def pem_key(data: bytes, where: str) -> VerificationKey:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return VerificationKey.public(load_pem_public_key(data))
    except (ValueError, TypeError):
        raise ConfigError(
            f"{where} is not a PEM public key (-----BEGIN PUBLIC KEY-----; a private key does not belong here)"
        ) from None


def jwks_keys(text: str, where: str) -> list[VerificationKey]:
    """The keys of a JWKS document (RFC 7517); symmetric (`oct`) entries are refused: a JWKS is public."""
    import jwt

    try:
        doc = json.loads(text)
        entries = doc["keys"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("'keys' is empty")
        out = []
        for entry in entries:
            if not isinstance(entry, Mapping) or entry.get("kty") == "oct":
                raise ValueError("only public keys (RSA, EC, OKP) belong in a JWKS")
            if entry.get("use", "sig") != "sig":
                continue
            jwk = jwt.PyJWK(dict(entry))
            out.append(VerificationKey.public(jwk.key, kid=jwk.key_id, alg=entry.get("alg")))
    except (ValueError, KeyError, TypeError, jwt.PyJWKError) as exc:
        raise ConfigError(f"{where} is not a usable JWKS: {exc}") from None
    if not out:
        raise ConfigError(f"{where} has no signing keys")
    return out


def load_verifier(
    *,
    secret: str | None = None,
    secret_file: str | None = None,
    public_keys: str | None = None,
    jwks_file: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    leeway: float = LEEWAY,
    max_header: int = MAX_HEADER,
) -> Verifier | None:
    """A verifier from `memoir run`'s settings, or None when no key is configured.

    `public_keys` is a comma-separated list of PEM files. The secret comes from a file or the
    environment, never a flag (a flag's value shows in `ps`).
    """
    keys: list[VerificationKey] = []
    if secret and secret_file:
        raise ConfigError("give the JWT secret once: MEMOIR_JWT_SECRET or --jwt-secret-file, not both")
    if secret:
        keys.append(VerificationKey.hmac(secret.encode()))
    if secret_file:
        keys.append(VerificationKey.hmac(_read(secret_file, "JWT secret file").strip()))
    paths = [p.strip() for p in (public_keys or "").split(",") if p.strip()]
    keys.extend(pem_key(_read(path, "JWT public key file"), f"JWT public key file {path!r}") for path in paths)
    if jwks_file:
        keys.extend(jwks_keys(_read(jwks_file, "JWKS file").decode("utf-8", "replace"), f"JWKS file {jwks_file!r}"))
    if not keys:
        if audience or issuer:
            raise ConfigError("a JWT audience or issuer is set but no key to verify tokens with")
        return None
    return Verifier(keys, audience=audience, issuer=issuer, leeway=leeway, max_header=max_header)


def describe(verifier: Verifier | None) -> str:
    """For the start-up banner: what is verified, never a key."""
    if verifier is None:
        return "off"
    parts = [", ".join(sorted(verifier.algorithms))]
    if verifier.audience:
        parts.append(f"aud {verifier.audience}")
    if verifier.issuer:
        parts.append(f"iss {verifier.issuer}")
    return "; ".join(parts)
