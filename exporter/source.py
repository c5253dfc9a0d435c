"""What every source kind shares: the snapshot protocol, the source protocol, and the one
translator from driver errors to SourceError.

A source turns I/O into a plain typed snapshot; a snapshot says when it was taken and of which
target. Whether a snapshot is still fresh enough to export is decided once, here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, Protocol, get_args

from exporter.dsn import redact

Reason = Literal["timeout", "connect", "query", "other"]
REASONS: tuple[Reason, ...] = get_args(Reason)


class Snapshot(Protocol):
    @property
    def taken_at(self) -> float:
        """Unix time the target was read."""

    @property
    def target(self) -> str:
        """The configured name of the target it was read from."""


class Source(Protocol):
    kind: str  # the name of its SourceKind: postgres | pgbouncer | prefect
    target: str  # the target's configured name

    async def poll(self) -> Snapshot:
        """Read the target once and return a snapshot; raise SourceError on failure."""

    def partial(self) -> Snapshot | None:
        """After a poll that failed (or timed out): what it read before, as a snapshot of its
        own type, or None. The poller publishes it in place of the last full snapshot, so
        nothing the failed poll could not read is shown as current."""

    async def close(self) -> None:
        """Drop the connection; the next poll reconnects."""


def is_fresh(snapshot: Snapshot | None, now: float, stale_after: float) -> bool:
    """Whether a snapshot may still be exported and diagnosed as current. The poller replaces a
    source's snapshot after every poll (a failed one leaves only what it read: partial()); this
    is the guard for a poller that stopped polling: data older than stale_after is never shown
    as current."""
    return snapshot is not None and now - snapshot.taken_at <= stale_after


class SourceError(Exception):
    """A failed poll, with a bounded reason for the errors counter and a safe message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


ErrorMap = Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], Reason]]


@contextmanager
def translated(errors: ErrorMap, secrets: Sequence[str | None], prefix: str = ""
               ) -> Iterator[None]:
    """Turn the driver errors listed in `errors` into a SourceError with their reason and a
    one-line message scrubbed of every secret (passwords, keys, header values, in any
    escaped or encoded form). Anything not listed is `other`, a bug to look at: its type
    and message, scrubbed too (the poller used to show it as it was)."""
    try:
        yield
    except SourceError:
        raise
    except Exception as exc:
        for types, reason in errors:
            if isinstance(exc, types):
                raise SourceError(reason, prefix + redact(first_line(exc), list(secrets))) \
                    from None
        message = f"{type(exc).__name__}: {first_line(exc)}"
        raise SourceError("other", prefix + redact(message, list(secrets))) from exc
