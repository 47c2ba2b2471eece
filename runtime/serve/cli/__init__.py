"""The `memoir` command line, one module per command group over the process and the service."""

from .main import main

__all__ = ["main"]
