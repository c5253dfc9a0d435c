"""structlog setup: JSON lines in containers, readable lines on a terminal, or logfmt (the
exporter toolkit's default format).

Nothing logged carries a DSN: sources log their target's name, and error texts are scrubbed of
the target's password before they reach a log call.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = _renderer(fmt)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiohttp's access log is off; its errors go through the standard library at this level.
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(name)s %(message)s")
    # httpx logs every request at INFO: a Prefect poll is a few dozen of them.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(
            level.upper())))


def _renderer(fmt: str) -> structlog.typing.Processor:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    if fmt == "logfmt":
        # time, level and message first, as the toolkit's (slog's) logfmt lines begin
        return structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"],
                                                   drop_missing=True)
    return structlog.processors.JSONRenderer()
