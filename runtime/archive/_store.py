"""The object store an archive lives in, reached by URL through obstore (one library for all clouds).

`file:///abs/dir`, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://account/container/prefix`,
`memory:///` (tests). Credentials and endpoints come from the environment the way each cloud's own
tools read them (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_…`, `AZURE_…`),
so the URL stays secret-free and can be logged. obstore is the optional extra `memoir[archive]`:
imported when an archive is opened, so a runtime without an archive never needs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..model.errors import ConfigError, Unavailable
from ..wire.redact import redact_url

_SCHEMES = ("file", "memory", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "http", "https")


class ObjectStore:
    """Put, get, list and delete whole objects under one URL; every failure names the URL."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """`create`: a `file://` directory that is not there is made (else: an error naming it)."""
        self.url = url
        self.where = redact_url(url)
        scheme = url.split(":", 1)[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ConfigError(
                f"archive URL {self.where!r}: expected file:///dir, s3://bucket/prefix, gs://…, az://… or memory:///"
            )
        try:
            import obstore
            from obstore.exceptions import AlreadyExistsError, PreconditionError
            from obstore.store import from_url
        except ImportError:
            raise ConfigError(
                f"archive URL {self.where!r} needs the obstore package: `pip install obstore`"
                " (or install memoir with its archive extra)"
            ) from None
        self._ob: Any = obstore
        self._exists: tuple[type[Exception], ...] = (AlreadyExistsError, PreconditionError, FileExistsError)
        options: dict[str, Any] = {}
        if scheme == "file":
            root = Path(url.removeprefix("file://"))
            if create:
                root.mkdir(parents=True, exist_ok=True)
            elif not root.is_dir():
                raise ConfigError(f"archive URL {self.where!r}: no directory {root}")
        elif scheme in ("s3", "s3a") and os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true"):
            options["client_options"] = {"allow_http": True}
        try:
            self._store: Any = from_url(url, **options)
        except Exception as exc:  # noqa: BLE001 - obstore's errors are many; each is a bad URL here
            raise ConfigError(f"archive URL {self.where!r}: {_first_line(exc)}") from None

    def _fail(self, doing: str, exc: BaseException) -> Unavailable:
        return Unavailable("archive unavailable", f"archive {self.where}: {doing}: {_first_line(exc)}")

    async def put(self, path: str, data: bytes) -> None:
        try:
            await self._ob.put_async(self._store, path, data, use_multipart=False)
        except Exception as exc:
            raise self._fail(f"writing {path}", exc) from exc

    async def create(self, path: str, data: bytes) -> bool:
        """Write an object only if there is none at `path` (a conditional put); False if there was one."""
        try:
            await self._ob.put_async(self._store, path, data, mode="create")
        except self._exists:
            return False
        except Exception as exc:
            raise self._fail(f"creating {path}", exc) from exc
        return True

    async def get(self, path: str) -> bytes | None:
        """The object's bytes, or None if there is no such object."""
        try:
            result = await self._ob.get_async(self._store, path)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail(f"reading {path}", exc) from exc

    async def list(self, prefix: str) -> list[tuple[str, int]]:
        """(path, size) of every object under `prefix`, sorted by path."""
        try:
            found: list[tuple[str, int]] = []
            async for chunk in self._ob.list(self._store, prefix):
                found.extend((meta["path"], meta["size"]) for meta in chunk)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._fail(f"listing {prefix}", exc) from exc
        return sorted(found)

    async def delete(self, path: str) -> None:
        try:
            await self._ob.delete_async(self._store, path)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._fail(f"deleting {path}", exc) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
