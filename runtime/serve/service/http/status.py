"""Error codes of the wire protocol as HTTP statuses; the body stays the protocol's error JSON.

`invalid` is 400 (the request itself is malformed: fix it, do not retry); `rejected` is 422 (well
formed, but the entity refused it in its current state); `conflict` is 409 (another writer came
first: retry with the same Idempotency-Key); `key_reused` is 422 too (an Idempotency-Key sent
again with another request). `request_timeout` (408) and `unsupported_media_type` (415) are the
gateway's own. The retryable codes, `overloaded` and `unavailable`,
are 503 with `Retry-After`.
"""

from __future__ import annotations

STATUS: dict[str, int] = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_command": 404,
    "unknown_entity_type": 404,
    "unknown_view": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "conflict": 409,
    "forgotten": 410,
    "too_large": 413,
    "unsupported_media_type": 415,
    "rejected": 422,
    "key_reused": 422,
    "internal": 500,
    "overloaded": 503,
    "unavailable": 503,
    "timeout": 504,
}

RETRY_AFTER_S = 1  # what a 503 or 504 tells the client to wait before retrying


def status_of(code: str) -> int:
    """The HTTP status of an error code; a code this version does not know is a 500."""
    return STATUS.get(code, 500)
