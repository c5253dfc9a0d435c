"""Runs each source on its interval, with a timeout and backoff, and keeps its health.

Scrapes never wait on this: they read the latest SourceState. A failing source is retried with
a growing delay that never exceeds the poll interval, so a target that comes back is seen again
within one interval, and a target that is down is not hammered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from exporter.sources import Source, SourceError

log = structlog.get_logger("exporter.poller")

FIRST_RETRY_SECONDS = 0.5


@dataclass
class SourceState:
    source: Source
    snapshot: object | None = None
    up: bool = False
    last_success: float = 0.0  # unix time, 0 = never
    last_duration: float = 0.0
    last_error: str = ""
    polls: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by reason

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def target(self) -> str:
        return self.source.target


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
            state.snapshot = await asyncio.wait_for(state.source.poll(), self._timeout)
        except TimeoutError:
            await state.source.close()
            self._failed(state, "timeout", f"poll took longer than {self._timeout:g}s")
        except SourceError as exc:
            self._failed(state, exc.reason, str(exc))
        except Exception as exc:  # a bug or an unexpected payload must not stop the poller
            await state.source.close()
            self._failed(state, "other", f"{type(exc).__name__}: {exc}")
        else:
            if not state.up:
                log.info("source up", source=state.kind, target=state.target)
            state.up = True
            state.last_success = time.time()
            state.last_error = ""
        state.last_duration = time.monotonic() - started
        self._on_update()

    def _failed(self, state: SourceState, reason: str, message: str) -> None:
        if state.up or state.polls == 1 or message != state.last_error:
            log.warning("source poll failed", source=state.kind, target=state.target,
                        reason=reason, error=message)
        state.up = False
        state.errors[reason] += 1
        state.last_error = message

    async def _loop(self, state: SourceState) -> None:
        retry = FIRST_RETRY_SECONDS
        while True:
            started = time.monotonic()
            await self.poll_once(state)
            if state.up:
                retry = FIRST_RETRY_SECONDS
                delay = self._interval - (time.monotonic() - started)
            else:
                delay, retry = min(retry, self._interval), min(retry * 2, self._interval)
            await asyncio.sleep(max(0.0, delay))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(s), name=f"poll {s.kind}/{s.target}")
                       for s in self.states]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*(s.source.close() for s in self.states), return_exceptions=True)
