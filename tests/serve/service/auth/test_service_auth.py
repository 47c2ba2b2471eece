"""Verified callers end to end: real tokens over a real nats-server into a real journal.

Allowed, forbidden and unauthorized; the caller's subject stored with each event and published
as `Memoir-Principal`; and every bad token answered `unauthorized`, naming what was wrong
without echoing the token, storing nothing, with the runtime serving the next command.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from support.served import Served, client, serve

from runtime import Forbidden, Unauthorized, Verifier, load_verifier
from runtime.wire.protocol import H_AUTHORIZATION, H_PRINCIPAL, decode_answer, stream_name

from .bank import app, open_app
from .mint import (
    AUDIENCE,
    ISSUER,
    SECRET,
    claims,
    hs256,
    hs256_with,
    public_pem,
    rsa_key,
    tampered,
    unsigned,
)

pytestmark = pytest.mark.anyio

RSA = rsa_key()  # the issuer's key the runtime trusts
OTHER = rsa_key()  # somebody else's


def make_verifier(tmp_path: Path) -> Verifier:
    """From files, as `memoir run` loads it: an HMAC secret and an RSA public key."""
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "issuer.pem").write_bytes(public_pem(RSA))
    v = load_verifier(
        secret_file=str(tmp_path / "secret"),
        public_keys=str(tmp_path / "issuer.pem"),
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert v is not None
    return v


def rs256(body: dict[str, object], key: object = RSA) -> str:
    import jwt

    return jwt.encode(body, key, algorithm="RS256")  # type: ignore[arg-type]


async def raw(served: Served, command: str, authorization: str | None) -> dict:
    """A request with exactly this Authorization header (clients in any language send what they like)."""
    payload = b'{"amount": 5}' if command == "deposit" else b"{}"
    nc = served.svc.nc
    assert nc is not None
    headers = None if authorization is None else {H_AUTHORIZATION: authorization}
    msg = await nc.request(f"memoir.cmd.account.acc-1.{command}", payload, timeout=5, headers=headers)
    return msgspec.to_builtins(decode_answer(msg.data))  # type: ignore[no-any-return]


async def test_allowed_forbidden_unauthorized_and_who_did_it(tmp_path: Path) -> None:
    async with serve(app, tmp_path, make_verifier(tmp_path)) as served:
        teller = hs256(claims("ann", role="teller"))
        async with client(served, token=teller) as c:
            assert (await c.send("account", "acc-1", "deposit", {"amount": 10})).result == 10
            assert (await c.send("account", "acc-1", "whoami")).result == {"subject": "ann", "role": "teller"}
            # a per-call token overrides the client's: an RS256 one with an OAuth scope
            scoped = rs256(claims("svc-batch", scope="bank:read bank:write"))
            assert (await c.send("account", "acc-1", "deposit", {"amount": 1}, token=scoped)).result == 11
            with pytest.raises(Forbidden, match=r"^forbidden: 'ann' may not send account.close$"):
                await c.send("account", "acc-1", "close")
            with pytest.raises(Forbidden, match=r"'bob' may not send account.deposit"):
                await c.send("account", "acc-1", "deposit", {"amount": 5}, token=hs256(claims("bob", role="clerk")))
            assert (await c.send("account", "acc-1", "close", token=hs256(claims("root", role="admin")))).result
        async with client(served) as anonymous:
            assert (await anonymous.send("account", "acc-1", "balance")).result == 11  # allow=Anyone()
            with pytest.raises(Unauthorized, match=r"account.deposit needs a verified caller"):
                await anonymous.send("account", "acc-1", "deposit", {"amount": 5})
            with pytest.raises(Unauthorized, match=r"account.whoami needs a verified caller"):  # policy default
                await anonymous.send("account", "acc-1", "whoami")

        stored = await served.journal.read("account", "acc-1")
        assert [(e.name, e.principal) for e in stored] == [
            ("Deposited", "ann"),
            ("Deposited", "svc-batch"),
            ("Closed", "root"),
        ]
        assert msgspec.json.decode(stored[0].payload) == {"amount": 10, "by": "ann"}  # the handler saw the caller
        assert served.svc.publisher is not None
        await served.svc.publisher.flush(10)
        js = served.svc.nc.jetstream()  # type: ignore[union-attr]
        published = [await js.get_msg(stream_name("memoir", "account"), seq) for seq in (1, 2, 3)]
        assert [(m.headers or {}).get(H_PRINCIPAL) for m in published] == ["ann", "svc-batch", "root"]


async def test_every_bad_token_is_unauthorized_says_why_and_stores_nothing(tmp_path: Path) -> None:
    good = claims("ann", role="teller")
    now = good["iat"]
    cases = {
        "forged signature": (tampered(hs256(good), role="teller", sub="mallory"), "signature does not verify"),
        "forged RS256 claims": (tampered(rs256(claims("eve")), sub="admin"), "signature does not verify"),
        "expired": (hs256({**good, "exp": now - 3600}), "bad bearer token: expired"),
        "not yet valid": (hs256({**good, "nbf": now + 3600}), "not yet valid (nbf is in the future)"),
        "wrong audience": (hs256({**good, "aud": "another-service"}), "wrong audience (expected 'memoir-bank')"),
        "wrong issuer": (hs256({**good, "iss": "https://evil.test"}), "wrong issuer (expected 'https://issuer.test')"),
        "alg none": (unsigned(good), "algorithm 'none' is not accepted here"),
        "another key": (rs256(good, OTHER), "signature does not verify with any configured key"),
        "another secret": (hs256(good, b"another-secret-that-is-long-enough-0123456789"), "signature does not verify"),
        "HS256 keyed with the RSA public key": (hs256_with(public_pem(RSA), good), "signature does not verify"),
        "unknown algorithm": (unsigned(good, alg="HS1024"), "algorithm 'HS1024' is not accepted here"),
        "garbage": ("not-a-jwt", "not a JWT"),
        "three dots of garbage": ("a.b.c", "not a JWT"),
    }
    headers = {name: (f"Bearer {token}", why, token) for name, (token, why) in cases.items()}
    too_long = "the Authorization header is 9007 bytes, the limit is 8192"
    headers["oversized header"] = ("Bearer " + "a" * 9000, too_long, "")
    headers["not bearer"] = ("Basic YW5uOnB3", "the Authorization header must be 'Bearer <JWT>'", "YW5uOnB3")
    headers["bearer without token"] = ("Bearer ", "must be 'Bearer <JWT>'", "")
    async with serve(app, tmp_path, make_verifier(tmp_path)) as served:
        ok = await raw(served, "deposit", "Bearer " + hs256(good))
        assert ok["ok"] and ok["seq"] == 1
        for name, (header, why, token) in headers.items():
            for command in ("deposit", "balance"):  # a bad token is refused even where anyone may ask
                answer = await raw(served, command, header)
                assert not answer["ok"], name
                error = answer["error"]
                assert error["code"] == "unauthorized", (name, error)
                assert why in error["message"], (name, error["message"])
                assert len(token) < 8 or token not in error["message"], f"{name}: the reply echoes the token"
        assert [e.principal for e in await served.journal.read("account", "acc-1")] == ["ann"], "nothing stored"
        after = await raw(served, "deposit", "Bearer " + rs256(claims("bea", role="teller")))
        assert after["ok"] and after["result"] == 10, "still serving"


async def test_without_keys_or_policy_everything_works_as_before(tmp_path: Path) -> None:
    async with serve(open_app, tmp_path, None) as served:
        token = hs256(claims("ann"))  # nobody verifies it, so it names nobody
        assert (await raw(served, "whoami", f"Bearer {token}"))["result"] == {"subject": None, "role": None}
        assert (await raw(served, "balance", None))["ok"]
        refused = await raw(served, "deposit", f"Bearer {token}")  # its own @command rule still holds
        assert refused["error"]["code"] == "unauthorized"
        assert await served.journal.read("account", "acc-1") == []
