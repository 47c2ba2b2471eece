"""What a client command talks to: flags, then MEMOIR_* variables, then the data dir's manifest.

`memoir run` records its app, journal, view store, prefix and NATS URL in the data dir
(`datadir.Manifest`), so `memoir state inventory X --data-dir d` folds with the app that
runtime hosts and reads the journal it writes, PostgreSQL or JetStream included, and
`memoir send` knows at once whether a runtime holds that data dir at all.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from ...model.app import App
from ...model.errors import MemoirError
from ...wire.auth import NatsAuth
from ...wire.nats import connect
from ..process.appspec import load_app
from ..process.datadir import Manifest, holder, read_manifest
from ..process.identity import local_auth
from ..process.settings import Settings, nats_url_file
from .auth_flags import from_args
from .outcome import unreachable

# Manifest fields that stand in for a setting nobody gave (their Settings field names).
_REMEMBERED = ("app", "journal_url", "view_store_url", "prefix", "archive_url")


def run_settings(args: Any) -> Settings:
    """Flags over MEMOIR_* environment variables over defaults, as `memoir run` reads them."""
    names = [f.name for f in msgspec.structs.fields(Settings)]
    return Settings.from_env(**{n: getattr(args, n, None) for n in names})


@dataclass(frozen=True)
class Target:
    settings: Settings
    manifest: Manifest | None
    auth: NatsAuth = field(
        default_factory=NatsAuth
    )  # the --nats-* credential: for an external NATS and a nats:// journal
    advice: str = ""  # how to give a credential the data dir does not keep, when one may be missing

    @property
    def data(self) -> Path:
        return self.settings.data

    def app(self) -> App:
        """The app of the runtime on this data dir, found from the directory it was started in."""
        m = self.manifest
        if m is not None and m.app_path and m.app == self.settings.app and m.app_path not in sys.path:
            sys.path.append(m.app_path)
        return load_app(self.settings.app)

    def nats_url(self) -> str:
        """--nats-url, MEMOIR_NATS_URL, the runtime's external NATS, or the embedded one while it runs."""
        if self.settings.nats_url:
            return self.settings.nats_url
        data = self.data
        start = f"start it with `memoir run --data-dir {data}`, or give --nats-url"
        recorded = self.manifest.nats_url if self.manifest is not None else _read(nats_url_file(data))
        if recorded is None:
            raise unreachable(f"no Memoir runtime has run with data dir {data}: {start}")
        if holder(data) is None:
            raise unreachable(f"no Memoir runtime is running with data dir {data}: {start}")
        return recorded

    def nats_auth(self) -> NatsAuth:
        """The given credential for an external NATS; the embedded server's key from the data dir."""
        return self.auth if self.settings.nats_url else local_auth(self.data)

    async def connect(self, timeout: float) -> tuple[NATS, str]:
        url = self.nats_url()
        try:
            return await connect(url, timeout=timeout, auth=self.nats_auth()), url
        except MemoirError as exc:
            raise unreachable(f"{exc}; {self.advice}" if self.advice else str(exc)) from None


def client_target(args: Any) -> Target:
    """Flags over MEMOIR_* variables over what the data dir's runtime recorded over defaults."""
    data = Path(getattr(args, "data_dir", None) or os.environ.get("MEMOIR_DATA_DIR") or ".memoir")
    manifest = read_manifest(data)
    env = dict(os.environ)
    if manifest is not None:
        recorded = {name: getattr(manifest, name) for name in _REMEMBERED}
        if not manifest.embedded_nats:
            recorded["nats_url"] = manifest.nats_url
        for name, value in recorded.items():
            if value and not env.get(f"MEMOIR_{name.upper()}"):
                env[f"MEMOIR_{name.upper()}"] = value
    names = [f.name for f in msgspec.structs.fields(Settings)]
    flags = {n: getattr(args, n, None) for n in names}
    flags["data_dir"] = str(data)
    auth = from_args(args)
    return Target(Settings.from_env(env, **flags), manifest, auth, _advice(manifest, flags, auth))


def _advice(manifest: Manifest | None, flags: dict[str, Any], auth: NatsAuth) -> str:
    """What to say when the runtime's NATS URL had a credential that its manifest leaves out."""
    if manifest is None or "nats_url" not in manifest.secrets_left_out:
        return ""
    if flags.get("nats_url") or os.environ.get("MEMOIR_NATS_URL") or auth != NatsAuth():
        return ""  # the user gave one: an error is about that one
    return (
        "memoir run's NATS URL carried a credential, which the data dir does not keep:"
        " give it with MEMOIR_NATS_URL or --nats-url, or the --nats-* credential flags"
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
