"""Sources turn I/O into plain typed snapshots. One module per source."""

from __future__ import annotations

from typing import Protocol


class SourceError(Exception):
    """A failed poll, with a bounded reason for the errors counter and a safe message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # timeout | connect | query | other


class Source(Protocol):
    kind: str  # postgres | pgbouncer | prefect
    target: str  # the target's configured name

    async def poll(self) -> object:
        """Read the target once and return a snapshot; raise SourceError on failure."""

    async def close(self) -> None:
        """Drop the connection; the next poll reconnects."""
