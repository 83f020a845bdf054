"""structlog set-up: JSON lines in production, console in development.

The request id (and, once authenticated, the caller) is bound through contextvars by the
middleware, so every line logged while serving a request carries it. Never log names,
full identity numbers, keys, PINs or tokens: log masked values and ids.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Log lines go to ``stream`` (default stdout; the one-shot commands use stderr so that
    their stdout is only their result)."""
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=True,
    )
