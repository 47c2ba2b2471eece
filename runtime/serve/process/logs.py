"""structlog set-up: a console renderer for a person at a terminal, JSON lines for everything else."""

from __future__ import annotations

import logging
import sys

import structlog

from ...model.errors import ConfigError


def configure(fmt: str = "auto", level: str = "info") -> None:
    if fmt not in ("auto", "console", "json"):
        raise ConfigError(f"log format must be auto, console or json, got {fmt!r}")
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ConfigError(f"unknown log level {level!r}")
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if not console else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
