"""The exporter's side of the Prefect benchmark: PrefectSource.poll() timed at every size in
turn, as it runs and with retention read on every poll; requests per poll and their latency."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from exporter.app import build_sources
from exporter.config import load
from exporter.prefect import source as source_module
from exporter.prefect.snapshot import PrefectSnapshot
from exporter.prefect.source import PrefectSource


@dataclass
class PollResult:
    median: float
    best: float  # the fastest poll: what is left when nothing else wanted the CPU
    requests: list[int]
    scheduled_seen: int
    latency: dict[str, float]  # mean seconds per request over the timed polls, by endpoint
    seen: str  # what the last poll saw of the runs and events paths (that they were exercised)


def prefect_source(api_url: str) -> PrefectSource:
    """The source exactly as the exporter's build_sources makes it, with default settings."""
    sources = build_sources(load({"prefect_api_url": api_url}, environ={}))
    source = sources[0]
    assert isinstance(source, PrefectSource)
    return source


def total_requests(snapshot: PrefectSnapshot) -> int:
    return sum(r.count for r in snapshot.requests.values())


def mean_latency(first: PrefectSnapshot, last: PrefectSnapshot) -> dict[str, float]:
    latency = {}
    for endpoint, stats in last.requests.items():
        before = first.requests.get(endpoint)
        count = stats.count - (before.count if before else 0)
        seconds = stats.seconds - (before.seconds if before else 0.0)
        if count:
            latency[endpoint] = seconds / count
    return latency


def seen(snap: PrefectSnapshot) -> str:
    """The stuck sample, the outcome counts, heartbeats and events, as the poll read them."""
    parts = []
    if snap.runs is not None:
        stuck = sum(g.stuck for g in snap.runs.stuck.values())
        zombies = sum((snap.runs.without_heartbeat or {}).values())
        parts.append(f"stuck sample {snap.runs.sampled} unfinished runs ({stuck} stuck), "
                     f"heartbeats seen {snap.runs.heartbeats} ({zombies} zombies)")
    if snap.outcomes is not None:
        parts.append("ended within the hour " + ", ".join(
            f"{t} {n}" for t, n in snap.outcomes.totals.items()))
    if snap.events is not None and snap.events.newest is not None:
        parts.append(f"newest event {snap.taken_at - snap.events.newest:.0f}s old")
    if snap.retention is not None:
        parts.append(f"events past retention: {snap.retention.events_overdue}")
    return "; ".join(parts)


WARM_UP_POLLS = 3


@contextlib.contextmanager
def retention_every_poll() -> Iterator[None]:
    """The exporter reads retention every RETENTION_EVERY_SECONDS (5 min): one poll in many
    pays for it. Here every poll does, to time such a poll."""
    saved = source_module.RETENTION_EVERY_SECONDS
    source_module.RETENTION_EVERY_SECONDS = 0.0
    try:
        yield
    finally:
        source_module.RETENTION_EVERY_SECONDS = saved


@dataclass
class Timed:
    """One source's polls: the per-poll times and request counts."""

    source: PrefectSource
    every_poll: Callable[[], contextlib.AbstractContextManager[None]]
    times: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    first: PrefectSnapshot | None = None
    last: PrefectSnapshot | None = None

    async def poll(self, timed: bool) -> None:
        with self.every_poll():
            started = time.perf_counter()
            snapshot = await self.source.poll()
            seconds = time.perf_counter() - started
        if timed:
            assert self.last is not None
            self.times.append(seconds)
            self.requests.append(total_requests(snapshot) - total_requests(self.last))
        else:
            self.first = snapshot
        self.last = snapshot

    def result(self) -> PollResult:
        assert self.first is not None and self.last is not None
        return PollResult(statistics.median(self.times), min(self.times), self.requests,
                          self.last.scheduling.runs_by_state_type.get("SCHEDULED", -1),
                          mean_latency(self.first, self.last), seen(self.last))


async def time_exporters(api_urls: list[str],
                         polls: int) -> list[tuple[PollResult, PollResult]]:
    """At each size, the exporter's poll as it runs and reading retention on every poll. All
    the sizes' servers run at once and their polls take turns, one after the other: a machine
    busy with something else slows every size alike, and the ratios stay fair."""
    timed = [(Timed(prefect_source(url), contextlib.nullcontext),
              Timed(prefect_source(url), retention_every_poll)) for url in api_urls]
    every = [t for pair in timed for t in pair]
    try:
        for _ in range(WARM_UP_POLLS):  # connections, server-side caches, both loops' code
            for t in every:
                await t.poll(timed=False)
        for _ in range(polls):
            for t in every:
                await t.poll(timed=True)
    finally:
        for t in every:
            await t.source.close()
    return [(regular.result(), reading.result()) for regular, reading in timed]
