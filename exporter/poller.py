"""Runs each source on its interval, with a timeout and backoff, and keeps its health.

Scrapes never wait on this: they read the latest SourceState. A failing source is retried with
a growing delay that never exceeds the poll interval, so a target that comes back is seen again
within one interval, and a target that is down is not hammered.

What is shown is what the last poll read, never more: a successful poll replaces the source's
snapshot; a failed one (an error or the timeout) replaces it with what it read before it failed
(Source.partial(): for Prefect, the health and ready probe) or with nothing. The values the
failed poll could not read are absent from /metrics and from the diagnosis until a poll reads
them again, the same rule for every kind; `up` and the last-success timestamp say why.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from exporter.finding import SourceFailure
from exporter.source import Reason, Snapshot, Source, SourceError, is_fresh

log = structlog.get_logger("exporter.poller")

FIRST_RETRY_SECONDS = 0.5


@dataclass
class SourceState:
    source: Source
    snapshot: Snapshot | None = None
    up: bool = False
    last_success: float = 0.0  # unix time, 0 = never
    last_duration: float = 0.0
    last_error: str = ""
    polls: int = 0
    errors: Counter[Reason] = field(default_factory=Counter)

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def target(self) -> str:
        return self.source.target

    @property
    def shown(self) -> str:
        """What is exported and diagnosed of this source, for the landing page."""
        if self.snapshot is None:
            return "nothing" if self.polls else "nothing yet"
        return "all of the last poll" if self.up else "only what the failed poll read"


def fresh_snapshots(states: Sequence[SourceState], now: float, stale_after: float
                    ) -> list[Snapshot]:
    """The snapshots that may be exported and diagnosed as current, in the states' order."""
    return [s.snapshot for s in states
            if s.snapshot is not None and is_fresh(s.snapshot, now, stale_after)]


def failures(states: Sequence[SourceState]) -> list[SourceFailure]:
    """The targets whose last poll failed."""
    return [SourceFailure(s.kind, s.target, s.last_error) for s in states
            if not s.up and s.polls]


def next_delay(succeeded: bool, elapsed: float, retry: float, interval: float
               ) -> tuple[float, float]:
    """(seconds until the next poll, the retry delay after that). After a success the next poll
    starts one interval after this one started; after a failure it comes after `retry`, which
    doubles on each failure but never exceeds the interval, so a target that comes back is seen
    within one interval and a target that is down is not hammered."""
    if succeeded:
        return max(0.0, interval - elapsed), FIRST_RETRY_SECONDS
    return min(retry, interval), min(retry * 2, interval)


def _cancel_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Poller:
    def __init__(self, sources: Sequence[Source], *, interval: float, timeout: float,
                 on_update: Callable[[], None] = lambda: None) -> None:
        self.states = [SourceState(s) for s in sources]
        self._interval = interval
        self._timeout = timeout
        self._on_update = on_update
        self._tasks: list[asyncio.Task[None]] = []

    async def poll_once(self, state: SourceState) -> None:
        """One poll with a timeout; records the outcome in state. Never raises."""
        started = time.monotonic()
        state.polls += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the inner result (or
            # raises its error) when a cancel arrives as the poll ends, losing the cancel, and
            # stop() would wait forever for a poller that keeps polling (gh-86296)
            async with asyncio.timeout(self._timeout):
                state.snapshot = await state.source.poll()
        except TimeoutError:
            self._failed(state, "timeout", f"poll took longer than {self._timeout:g}s")
            await state.source.close()
        except SourceError as exc:
            if exc.reason == "other":  # an unexpected error, scrubbed by translated()
                await state.source.close()
            self._failed(state, exc.reason, str(exc))
        except Exception as exc:  # a bug or an unexpected payload must not stop the poller
            self._failed(state, "other", f"{type(exc).__name__}: {exc}")
            await state.source.close()
        else:
            if not state.up:
                log.info("source up", source=state.kind, target=state.target)
            state.up = True
            state.last_success = time.time()
            state.last_error = ""
        state.last_duration = time.monotonic() - started
        self._on_update()

    def _failed(self, state: SourceState, reason: Reason, message: str) -> None:
        if state.up or state.polls == 1 or message != state.last_error:
            log.warning("source poll failed", source=state.kind, target=state.target,
                        reason=reason, error=message)
        state.up = False
        state.errors[reason] += 1
        state.last_error = message
        # what this poll could not read is no longer shown: only what it did read, if anything
        state.snapshot = state.source.partial()

    async def _loop(self, state: SourceState) -> None:
        retry = FIRST_RETRY_SECONDS
        while True:
            started = time.monotonic()
            await self.poll_once(state)
            if _cancel_requested():  # a cancel a driver swallowed must still stop the loop
                raise asyncio.CancelledError
            delay, retry = next_delay(state.up, time.monotonic() - started, retry,
                                      self._interval)
            await asyncio.sleep(delay)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(s), name=f"poll {s.kind}/{s.target}")
                       for s in self.states]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*(s.source.close() for s in self.states), return_exceptions=True)
