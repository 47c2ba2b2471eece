"""Real tokens for the tests: PyJWT signs the good ones; the forgeries are built by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = b"s3cret-for-tests-only-0123456789abcdef"  # 38 bytes: HS256
AUDIENCE = "memoir-bank"
ISSUER = "https://issuer.test"


def claims(sub: str = "ann", **more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600, **more}


def hs256(body: dict[str, Any], secret: bytes = SECRET, **headers: Any) -> str:
    return jwt.encode(body, secret, algorithm="HS256", headers=headers or None)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(body: dict[str, Any], alg: str = "none") -> str:
    """`alg: none` (a token anyone can write), or any other algorithm name with no signature."""
    return f"{_b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{_b64(json.dumps(body).encode())}."


def hs256_with(secret: bytes, body: dict[str, Any]) -> str:
    """HS256 keyed with any bytes, a public key's PEM included (the HS/RS confusion attack)."""
    signing = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing}.{_b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


def tampered(token: str, **changes: Any) -> str:
    """The same signature over a body with `changes`: a forgery."""
    head, body, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(changes)
    return f"{head}.{_b64(json.dumps(data).encode())}.{sig}"
