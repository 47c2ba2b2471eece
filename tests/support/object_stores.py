"""Object stores for the archive's tests: a local directory, and an S3-compatible server on loopback.

moto's server mode speaks S3's HTTP API (signatures, buckets, lists, gets, puts), so the archive
goes through obstore's real S3 client; it proves the requests and their handling, not S3's
durability, consistency or latency.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from runtime.serve.service.embedded_nats import free_port


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free 127.0.0.1 port, for the session."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket on the moto server, and the environment obstore reads its endpoint and keys from."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"memoir-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket
