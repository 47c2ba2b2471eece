"""The web console at `/ui`: server-rendered pages over what the HTTP API and the CLI read."""

from .app import Console

__all__ = ["Console"]
