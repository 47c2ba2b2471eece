"""URLs fit to store: the secret is left out (not masked), where and as whom stay."""

from __future__ import annotations

import pytest

from runtime.wire.redact import had_secrets, without_secrets


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("nats://memoir:pw@h:4222", "nats://memoir@h:4222"),
        (
            "nats://TOKEN@a:4222,tls://app:pw@b:4222",
            "nats://a:4222,tls://app@b:4222",
        ),  # a lone NATS user-info is a token
        ("postgresql://postgres:pw@db:5432/m?schema=x&password=z", "postgresql://postgres@db:5432/m?schema=x"),
        ("postgresql://postgres@db/m?sslmode=require", "postgresql://postgres@db/m?sslmode=require"),
        ("sqlite:///var/lib/memoir/journal.db", "sqlite:///var/lib/memoir/journal.db"),
        ("tls://h:4222", "tls://h:4222"),
    ],
)
def test_a_stored_url_keeps_where_and_who_but_no_secret(url: str, stored: str) -> None:
    assert without_secrets(url) == stored
    assert had_secrets(url) is (stored != url)
    assert "pw" not in without_secrets(url) and "TOKEN" not in without_secrets(url)
