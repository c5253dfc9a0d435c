"""The one way the lab, its tests and the benchmarks wait for a condition: `until` (blocking)
and `eventually` (async), the same rules for both.

A check returns true when the condition holds. A check that fails an assertion (a sample not
there yet) has not held yet; any other exception ends the wait at once (a server that exited
is not going to come back). After the timeout, TimedOut says what was awaited, for how long,
and the last assertion seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TimedOut(AssertionError):
    """A condition that did not hold within its timeout: a failed test, or a lab that did not
    come up (an AssertionError, so pytest reports it as the failure it is)."""


def _timed_out(what: str, timeout: float, last: str) -> TimedOut:
    return TimedOut(f"timed out after {timeout:g}s waiting for {what}{last}")


def _last(exc: AssertionError) -> str:
    return f" (last: {exc})" if str(exc) else ""


def until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition",
          interval: float = 0.1) -> None:
    """Until check() is true, checking every `interval` seconds; TimedOut after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        last = ""
        try:
            if check():
                return
        except AssertionError as exc:
            last = _last(exc)
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0,
                     what: str = "condition", interval: float = 0.1) -> None:
    """Until await check() is true, checking every `interval` seconds; TimedOut after
    `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        last = ""
        try:
            if await check():
                return
        except AssertionError as exc:
            last = _last(exc)
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(interval)
