"""The bearer-token verifier on its own: keys from configuration, real tokens, every way a token is wrong."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from support.waiting import eventually_sync

from runtime import ConfigError, Unauthorized, Verifier, load_verifier
from runtime.model.access import ANONYMOUS
from runtime.serve.service.auth import VerificationKey, jwks_keys

from .mint import AUDIENCE, ISSUER, SECRET, claims, ec_key, hs256, private_pem, public_pem, rsa_key


def verifier(**kw: object) -> Verifier:
    return Verifier([VerificationKey.hmac(SECRET)], audience=AUDIENCE, issuer=ISSUER, **kw)  # type: ignore[arg-type]


def refused(v: Verifier, header: str | None) -> str:
    with pytest.raises(Unauthorized) as info:
        v.verify(header)
    assert info.value.code == "unauthorized"
    return info.value.message


def test_a_good_token_names_the_caller_and_no_header_is_anonymous() -> None:
    v = verifier()
    caller = v.verify("Bearer " + hs256(claims("ann", role="teller")))
    assert caller.subject == "ann" and caller.claim("role") == "teller" and caller.authenticated
    assert v.verify("bearer   " + hs256(claims("bob"))).subject == "bob"  # the scheme is case-insensitive
    assert v.verify(None) is ANONYMOUS and not ANONYMOUS.authenticated


def test_required_claims() -> None:
    v = verifier()
    no_exp = claims()
    del no_exp["exp"]
    assert refused(v, "Bearer " + hs256(no_exp)) == "bad bearer token: the 'exp' claim is missing"
    no_sub = claims()
    del no_sub["sub"]
    assert refused(v, "Bearer " + hs256(no_sub)) == "bad bearer token: the 'sub' claim is missing"
    no_aud = claims()
    del no_aud["aud"]
    assert refused(v, "Bearer " + hs256(no_aud)) == "bad bearer token: the 'aud' claim is missing"


def test_a_cached_token_still_expires() -> None:
    v = verifier(leeway=0)
    token = hs256(claims(exp=int(time.time()) + 1))
    assert v.verify(f"Bearer {token}").subject == "ann"
    assert v.verify(f"Bearer {token}").subject == "ann"  # answered from the cache
    refusals: list[str] = []

    def refused() -> bool:  # the token lives one second
        try:
            v.verify(f"Bearer {token}")
        except Unauthorized as exc:
            refusals.append(exc.message)
            return True
        return False

    eventually_sync(refused, 5, "the expired token refused, cache or not")
    assert refusals == ["bad bearer token: expired"]


def test_rsa_and_ec_keys_admit_only_their_algorithms(tmp_path: Path) -> None:
    r, e = rsa_key(), ec_key()
    (tmp_path / "r.pem").write_bytes(public_pem(r))
    (tmp_path / "e.pem").write_bytes(public_pem(e))
    v = load_verifier(public_keys=f"{tmp_path / 'r.pem'}, {tmp_path / 'e.pem'}", audience=AUDIENCE, issuer=ISSUER)
    assert v is not None
    assert v.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256"}
    assert v.verify("Bearer " + jwt.encode(claims("rs"), r, algorithm="RS256")).subject == "rs"
    assert v.verify("Bearer " + jwt.encode(claims("ps"), r, algorithm="PS384")).subject == "ps"
    assert v.verify("Bearer " + jwt.encode(claims("es"), e, algorithm="ES256")).subject == "es"
    assert refused(v, "Bearer " + hs256(claims())) == (
        "bad bearer token: algorithm 'HS256' is not accepted here (accepted: ES256, PS256, PS384, PS512, RS256,"
        " RS384, RS512)"
    )


def test_a_jwks_file_selects_the_key_by_kid(tmp_path: Path) -> None:
    one, two = rsa_key(), rsa_key()
    jwks = {"keys": []}
    for kid, key in (("one", one), ("two", two)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwks["keys"].append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    v = load_verifier(jwks_file=str(path), audience=AUDIENCE, issuer=ISSUER)
    assert v is not None and v.algorithms == {"RS256"}
    assert v.verify("Bearer " + jwt.encode(claims("a"), two, algorithm="RS256", headers={"kid": "two"})).subject == "a"
    assert refused(v, "Bearer " + jwt.encode(claims(), two, algorithm="RS256", headers={"kid": "three"})) == (
        "bad bearer token: no configured key has id 'three' for RS256"
    )
    wrong = jwt.encode(claims(), two, algorithm="RS256", headers={"kid": "one"})  # claims a key it is not signed with
    assert "signature does not verify" in refused(v, f"Bearer {wrong}")
    assert v.verify("Bearer " + jwt.encode(claims("b"), one, algorithm="RS256")).subject == "b"  # no kid: tried in turn


def test_bad_configuration_is_refused_naming_what(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"secret is 6 bytes; it must be at least 32"):
        load_verifier(secret="short!")
    priv = tmp_path / "private.pem"
    priv.write_bytes(private_pem(rsa_key()))
    with pytest.raises(ConfigError, match=r"is not a PEM public key .* a private key does not belong here"):
        load_verifier(public_keys=str(priv))
    with pytest.raises(ConfigError, match=r"cannot read the JWT public key file '/nonexistent.pem'"):
        load_verifier(public_keys="/nonexistent.pem")
    with pytest.raises(ConfigError, match=r"only public keys"):
        jwks_keys(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "jwks")
    with pytest.raises(ConfigError, match=r"is not a usable JWKS"):
        jwks_keys("not json", "jwks")
    with pytest.raises(ConfigError, match=r"audience or issuer is set but no key"):
        load_verifier(audience="x")
    assert load_verifier() is None  # no keys: tokens are not read, as before
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    v = load_verifier(secret_file=str(secret))
    assert v is not None and v.verify("Bearer " + hs256(claims())).subject == "ann"
    with pytest.raises(ConfigError, match=r"give the JWT secret once"):
        load_verifier(secret=SECRET.decode(), secret_file=str(secret))
