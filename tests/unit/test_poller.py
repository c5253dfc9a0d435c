"""The poller's schedule and bookkeeping, without a target: backoff, freshness, failures."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from exporter.poller import (
    FIRST_RETRY_SECONDS,
    Poller,
    SourceState,
    failures,
    fresh_snapshots,
    next_delay,
)
from exporter.source import SourceError
from tests.factories import NamedSource, pg_snapshot


def test_after_a_success_the_next_poll_is_one_interval_after_this_one_began() -> None:
    assert next_delay(True, elapsed=0.4, retry=8.0, interval=15.0) == (14.6, FIRST_RETRY_SECONDS)
    # a poll slower than the interval: the next one at once, never a negative sleep
    assert next_delay(True, elapsed=20.0, retry=8.0, interval=15.0) == (0.0, FIRST_RETRY_SECONDS)


def test_failures_back_off_doubling_but_never_past_the_interval() -> None:
    delays, retry = [], FIRST_RETRY_SECONDS
    for _ in range(7):
        delay, retry = next_delay(False, elapsed=0.1, retry=retry, interval=5.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    # and one success resets it
    assert next_delay(True, 0.1, retry, 5.0)[1] == FIRST_RETRY_SECONDS


def test_freshness_is_decided_once_for_every_state() -> None:
    states = [SourceState(NamedSource("postgres", t)) for t in ("new", "old", "never")]
    states[0].snapshot = replace(pg_snapshot(), target="new", taken_at=1000.0)
    states[1].snapshot = replace(pg_snapshot(), target="old", taken_at=900.0)
    fresh = fresh_snapshots(states, now=1040.0, stale_after=45.0)
    assert [s.target for s in fresh] == ["new"]
    assert fresh_snapshots(states, now=1046.0, stale_after=45.0) == []


class _Flaky(NamedSource):
    """Fails with a SourceError, then hangs past the timeout, then succeeds."""

    def __init__(self) -> None:
        super().__init__("postgres", "flaky")
        self.calls = 0
        self.closed = 0

    async def poll(self) -> Any:  # a stand-in for Source.poll
        self.calls += 1
        if self.calls == 1:
            raise SourceError("connect", "connection refused")
        if self.calls == 2:
            await asyncio.sleep(10)
        return replace(pg_snapshot(), target="flaky")

    async def close(self) -> None:
        self.closed += 1


async def test_poll_once_records_each_outcome_by_reason() -> None:
    source = _Flaky()
    poller = Poller([source], interval=1.0, timeout=0.05)
    (state,) = poller.states
    await poller.poll_once(state)
    assert (state.up, dict(state.errors), state.last_error) == (
        False, {"connect": 1}, "connection refused")
    assert [f.error for f in failures(poller.states)] == ["connection refused"]
    await poller.poll_once(state)
    assert dict(state.errors) == {"connect": 1, "timeout": 1}
    assert source.closed == 1  # a timed-out connection is dropped, never reused
    await poller.poll_once(state)
    assert state.up and state.last_error == "" and state.polls == 3
    assert failures(poller.states) == []
    assert state.snapshot is not None and state.snapshot.target == "flaky"


async def test_a_failed_poll_leaves_nothing_it_could_not_read() -> None:
    """The rule for every kind: after a failed poll (an error or the timeout) the last full
    snapshot is no longer shown, even while it is recent; a source with a partial result
    (Prefect's probe) shows that instead."""
    source = _Flaky()
    source.calls = 2  # the next poll succeeds, the ones after it fail
    poller = Poller([source], interval=1.0, timeout=0.05)
    (state,) = poller.states
    await poller.poll_once(state)
    assert state.up and state.snapshot is not None
    assert state.shown == "all of the last poll"
    source.calls = 1  # hangs past the timeout
    await poller.poll_once(state)
    assert not state.up and state.snapshot is None
    assert fresh_snapshots(poller.states, now=1.0, stale_after=float("inf")) == []
    assert state.shown == "nothing"

    partial = replace(pg_snapshot(), target="flaky", taken_at=5.0)
    source.partial = lambda: partial
    source.calls = 0  # fails with a SourceError
    await poller.poll_once(state)
    assert state.snapshot is partial and state.shown == "only what the failed poll read"


class _SwallowsCancel(NamedSource):
    """A source whose driver turns a cancellation into its own error, as drivers do while a
    connection attempt is torn down (and as asyncio.wait_for did on 3.11 when the cancel met a
    finishing poll): the cancel must still stop the poller."""

    def __init__(self) -> None:
        super().__init__("postgres", "swallows")
        self.polls = 0

    async def poll(self) -> Any:
        self.polls += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise SourceError("connect", "connection attempt abandoned") from None


async def test_stop_ends_a_poller_whose_source_swallows_the_cancel() -> None:
    source = _SwallowsCancel()
    poller = Poller([source], interval=0.05, timeout=5)
    poller.start()
    while not source.polls:
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(poller.stop())
    done, _ = await asyncio.wait([stopping], timeout=2)
    assert done, "stop() is still waiting for a poller that keeps polling"
    assert source.polls == 1  # stopped, not polling again


async def test_stop_ends_pollers_whose_polls_fail_at_once() -> None:
    """Sources that fail immediately, stopped while their polls end: nothing keeps polling."""

    class Refused(NamedSource):
        async def poll(self) -> Any:
            await asyncio.sleep(0)
            raise SourceError("connect", "refused")

    poller = Poller([Refused("postgres", str(i)) for i in range(20)], interval=0.01, timeout=1)
    for _ in range(20):
        poller.start()
        await asyncio.sleep(0.005)
        done, _ = await asyncio.wait([asyncio.create_task(poller.stop())], timeout=2)
        assert done, "stop() is still waiting for a poller that keeps polling"
