"""What the HTTP server does against clients that hold connections or send garbage.

aiohttp keeps an idle connection for an hour, gives a client all the time it wants to send its
headers, accepts connections until the process runs out of file descriptors, and logs each
malformed request as an 11-line traceback. Here, instead:

- A connection that has not sent a whole request within HEADER_TIMEOUT seconds of opening is
  closed (slowloris), one idle for IDLE_TIMEOUT seconds after a response (aiohttp's keep-alive
  timeout, which also ends a slow second request), and one with a request in progress that
  finished no response for STUCK_TIMEOUT seconds (a client that does not read: slow read, or
  requests pipelined without reading the answers).
- At most max_connections() connections are open, well below the file descriptor limit so that
  accept() and the poller's own sockets always find one. A new connection beyond it closes the
  oldest connection that has no request in progress (so /healthz answers under a flood of idle
  sockets); when every connection is busy, the new one is closed.
- A malformed request, accept() out of file descriptors and a login refused for load are one
  structured warning per kind a minute, with the count of those suppressed since.

RequestHandler and TCPSite are aiohttp's; GuardedHandler reads three of RequestHandler's private
fields (`_request_count`, `_request_in_progress`, `_messages`), GuardedSite the Server's
`_kwargs`, and a response finished is seen in `log_access()`: tests/unit/test_web_abuse.py fails
if a new aiohttp changes them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

log = structlog.get_logger("exporter.web")

HEADER_TIMEOUT = 5.0  # seconds from connecting (after TLS's handshake, which has as long) to a
# whole request
IDLE_TIMEOUT = 5.0  # seconds a kept-alive connection may sit idle (aiohttp's default: 3630)
STUCK_TIMEOUT = 15.0  # seconds a request in progress may go without a response finished (a
# client that does not read what it asked for; Prometheus' own scrape timeout is 10 s)
MAX_CONNECTIONS = 256
RESERVED_FDS = 32  # left for the sources' connections, the log, /proc reads, accept()
MIN_CONNECTIONS = 8
WARN_EVERY = 60.0  # seconds between two warnings of one kind


def max_connections(fd_limit: int | None = None) -> int:
    """Open connections allowed: MAX_CONNECTIONS, less under a low file descriptor limit
    (`ulimit -n 64` gives 32)."""
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if fd_limit == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, fd_limit - RESERVED_FDS))


class RateLimitedWarnings:
    """One warning per kind every WARN_EVERY seconds, the next one saying how many were
    suppressed in between; flush() reports what is left (at shutdown)."""

    def __init__(self, every: float = WARN_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._fields: dict[tuple[str, str], dict[str, Any]] = {}

    def warn(self, event: str, kind: str, **fields: Any) -> None:
        key = (event, kind)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            self._fields[key] = fields
            return
        self._last[key] = now
        log.warning(event, kind=kind, suppressed=self._suppressed.pop(key, 0), **fields)

    def flush(self) -> None:
        for (event, kind), count in sorted(self._suppressed.items()):
            log.warning(event, kind=kind, suppressed=count, **self._fields.pop((event, kind)))
        self._suppressed.clear()


WARNINGS = RateLimitedWarnings()


class BadRequestFilter(logging.Filter):
    """aiohttp logs a malformed request ("Error handling request from ...") with its traceback
    through the standard library: that becomes one rate-limited structured warning naming the
    kind (BadHttpMethod, LineTooLong, InvalidHeader, ...), never the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # a bug in a handler keeps its traceback
        WARNINGS.warn("bad HTTP request", type(exc).__name__, status=exc.code)
        return False


_FILTER = BadRequestFilter()


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """accept() out of file descriptors is logged by asyncio with a traceback for each of up to
    128 attempts per retry (tens of thousands a minute): one warning instead."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
        WARNINGS.warn("cannot accept a connection", exc.strerror or type(exc).__name__,
                      errno=exc.errno)
        return
    loop.default_exception_handler(context)


_installed: list[object] = []  # one entry per running server (several in tests)


def install_logging() -> Callable[[], None]:
    """The filter on aiohttp's log and the loop's handler for accept errors; returns the undo
    (the filter stays while any server installed it runs)."""
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(_FILTER)
    token = object()
    _installed.append(token)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(loop_exception_handler)

    def undo() -> None:
        _installed.remove(token)
        if not _installed:
            server_log.removeFilter(_FILTER)
            if loop.get_exception_handler() is loop_exception_handler:
                loop.set_exception_handler(None if previous is loop_exception_handler
                                           else previous)
        WARNINGS.flush()

    return undo


class Connections:
    """The open connections, oldest first, and the limit on their number."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[GuardedHandler, None] = {}  # insertion-ordered: oldest first

    def admit(self, handler: GuardedHandler) -> bool:
        """Whether the new connection may stay; closes the oldest idle one to make room."""
        if len(self.open) >= self.limit:
            idle = next((h for h in self.open if not h.busy()), None)
            if idle is None:
                WARNINGS.warn("connection refused", "every connection busy",
                              limit=self.limit)
                return False
            WARNINGS.warn("connection closed to make room", "connection limit",
                          limit=self.limit)
            self.open.pop(idle)
            idle.drop()
        self.open[handler] = None
        return True


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for the first request, a watchdog for
    requests that finish no response, and a place in Connections."""

    __slots__ = ("_connections", "_deadline", "_progress_at", "_raw", "_watchdog")

    def __init__(self, connections: Connections, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._connections = connections
        self._deadline: asyncio.TimerHandle | None = None
        self._progress_at = 0.0  # loop time of the last response, or of a request on an idle one
        self._watchdog: asyncio.TimerHandle | None = None
        self._raw: asyncio.Transport | None = None  # kept: force_close() forgets it

    def busy(self) -> bool:
        """A request being handled or read and queued (not: idle, or headers still coming)."""
        return bool(self._request_in_progress or self._messages)

    def drop(self) -> None:
        """Closed now, unsent data discarded: aiohttp's force_close() closes the transport,
        which waits to send what is buffered, for ever to a client that does not read."""
        self.force_close()
        if self._raw is not None:
            self._raw.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._raw = cast(asyncio.Transport, transport)
        if not self._connections.admit(self):
            self.drop()
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(HEADER_TIMEOUT, self._too_slow)
        self._progress_at = loop.time()
        self._watchdog = loop.call_later(STUCK_TIMEOUT, self._watch)

    def data_received(self, data: bytes) -> None:
        was_busy = self.busy()
        super().data_received(data)
        if not was_busy and self.busy():
            self._progress_at = asyncio.get_running_loop().time()
        if self._request_count and self._deadline is not None:
            self._deadline.cancel()  # a whole request came: keep-alive takes over from here
            self._deadline = None

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        # called once a response is written, whether logged or not
        self._progress_at = asyncio.get_running_loop().time()
        super().log_access(request, response, time)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._connections.open.pop(self, None)
        for timer in (self._deadline, self._watchdog):
            if timer is not None:
                timer.cancel()
        self._deadline = self._watchdog = None
        self._raw = None
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._deadline = None
        if not self._request_count:
            self.drop()

    def _pending(self) -> bool:
        """A request in progress, or a response not yet sent (the client does not read)."""
        return self.busy() or (self._raw is not None and self._raw.get_write_buffer_size() > 0)

    def _watch(self) -> None:
        """Drops the connection when something has been pending for STUCK_TIMEOUT seconds with
        no response finished; otherwise looks again when that could first be true."""
        loop = asyncio.get_running_loop()
        stalled = loop.time() - self._progress_at
        if self._pending() and stalled >= STUCK_TIMEOUT:
            self._watchdog = None
            WARNINGS.warn("connection closed", "no response finished", seconds=STUCK_TIMEOUT)
            self.drop()
            return
        wait = STUCK_TIMEOUT - stalled if self._pending() else STUCK_TIMEOUT
        self._watchdog = loop.call_later(max(wait, 0.1), self._watch)


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections are GuardedHandlers sharing one Connections."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int,
                 ssl_context: Any = None, limit: int | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.connections = Connections(max_connections() if limit is None else limit)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # TCPSite.start would listen with aiohttp's handler
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        kwargs: dict[str, Any] = dict(server._kwargs)

        def handler() -> GuardedHandler:
            return GuardedHandler(self.connections, server, loop=loop, **kwargs)

        self._server = await loop.create_server(
            handler, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=HEADER_TIMEOUT if self._ssl_context else None)
        self._bound_port = self._server.sockets[0].getsockname()[1]
