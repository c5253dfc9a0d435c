"""Prefect API source: one poll of a Prefect server through its REST API.

Counts, never pages: every number comes from a `/count` with a filter body, or a `/filter` with
a small `limit`, so the cost of a poll does not grow with the number of flow runs. It grows with
the number of work pools, which is bounded by label_top_n. Requests run concurrently under a
cap. Each concern (scheduling.py, ...) reads its part of the snapshot.

Every poll starts with the probe: GET /api/health and GET /api/ready side by side, each with
half the poll timeout, on connections of their own and outside the cap, so they time the
server and not the exporter's own queueing. The probe is kept as the poll's partial result:
when the rest of the poll fails or times out, the poller still publishes it (partial()).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx

from exporter.prefect.client import PrefectClient
from exporter.prefect.config import PrefectAuth
from exporter.prefect.events import (
    RETENTION_EVERY_SECONDS,
    events_supported,
    read_events,
    read_retention,
)
from exporter.prefect.limits import Saturation, read_limits
from exporter.prefect.runs import outcomes_supported, read_outcomes, read_runs
from exporter.prefect.scheduling import list_work_pools, read_readiness, read_scheduling
from exporter.prefect.services import read_services
from exporter.prefect.settings import docket_scheme, parse_settings, vacuum_kinds
from exporter.prefect.snapshot import PrefectProbeSnapshot, PrefectSnapshot, Probe, Retention
from exporter.source import ErrorMap, translated

# A request that never got an HTTP answer; HTTP errors are turned into SourceError by the client.
TRANSPORT_ERRORS: ErrorMap = ((httpx.TimeoutException, "timeout"), (httpx.HTTPError, "connect"))


class PrefectSource:
    kind = "prefect"

    def __init__(self, target: str, api_url: str, *, auth: PrefectAuth, timeout: float,
                 headers: Mapping[str, str] | None = None, verify: bool | str = True,
                 horizon_seconds: float = 3600, max_pools: int = 20,
                 max_concurrency: int = 4, stuck_after: float = 3600,
                 heartbeat_timeout: float = 600, outcome_window: float = 3600) -> None:
        self.target = target
        self._api = PrefectClient(api_url, auth=auth, timeout=timeout, headers=headers,
                                  verify=verify, max_concurrency=max_concurrency)
        self._horizon = horizon_seconds
        self._max_pools = max_pools
        # the probe ends within half the poll timeout: the rest of the poll has the other half
        self._probe_timeout = timeout / 2
        self._partial: PrefectProbeSnapshot | None = None  # what this poll has read so far
        self._events: bool | None = None  # does the server offer its events API? (asked once)
        self._outcomes: bool | None = None  # can it count runs by end_time? (asked once)
        self._retention: Retention | None = None  # read every RETENTION_EVERY_SECONDS
        self._stuck_after = stuck_after
        self._heartbeat_timeout = heartbeat_timeout
        self._outcome_window = outcome_window
        self._saturation = Saturation()

    async def poll(self) -> PrefectSnapshot:
        self._partial = None
        probe = await self._probe()
        self._partial = PrefectProbeSnapshot(taken_at=time.time(), target=self.target,
                                             probe=probe)
        now = datetime.now(UTC)
        with translated(TRANSPORT_ERRORS, self._api.secrets(), f"{self._api.url}: "):
            try:
                return await self._read(now, probe)
            except httpx.HTTPError:
                await self.close()  # a fresh client (and connections) for the next poll
                raise

    def partial(self) -> PrefectProbeSnapshot | None:
        """What the last poll read before it failed: the probe (None: it failed before the
        probe ended). The poller publishes it in place of the full snapshot."""
        return self._partial

    async def _probe(self) -> Probe:
        """/health and /ready at once; each answers (ok, seconds) and never raises."""
        api, timeout = self._api, self._probe_timeout
        (health_ok, health), (ready_ok, ready) = await asyncio.gather(
            api.probe("health", timeout), api.probe("ready", timeout))
        return Probe(health_seconds=health, health_ok=health_ok, ready_seconds=ready,
                     ready_ok=ready_ok, health_failures=api.requests["/health"].errors,
                     ready_failures=api.requests["/ready"].errors)

    async def _read(self, now: datetime, probe: Probe) -> PrefectSnapshot:
        api = self._api
        version, settings, pools = await asyncio.gather(
            api.call("GET", "admin/version", "/admin/version", optional=True),
            api.call("GET", "admin/settings", "/admin/settings", optional=True),
            list_work_pools(api, self._max_pools))
        numbers, texts = parse_settings(settings)
        names = [str(p.get("name", "")) for p in pools]
        if self._events is None:
            self._events = await events_supported(api, now)
        if self._outcomes is None:
            self._outcomes = await outcomes_supported(api, now)
        scheduling, services, events, runs, outcomes, limits = await asyncio.gather(
            read_scheduling(api, now, self._horizon, pools),
            read_services(api, now, numbers, names),
            read_events(api, now) if self._events else _nothing(),
            read_runs(api, now, names, stuck_after=self._stuck_after,
                      heartbeat_timeout=self._heartbeat_timeout, events=self._events),
            read_outcomes(api, now, self._outcome_window, names) if self._outcomes
            else _nothing(),
            read_limits(api, now.timestamp(), self._saturation))
        readiness = await read_readiness(api, scheduling.queues)
        if self._events and (self._retention is None or now.timestamp()
                             - self._retention.checked_at >= RETENTION_EVERY_SECONDS):
            self._retention = await read_retention(api, now, numbers, vacuum_kinds(settings))
        return PrefectSnapshot(
            taken_at=time.time(),
            target=self.target,
            probe=probe,
            version=version if isinstance(version, str) else "",
            settings=numbers, text_settings=texts,
            scheduling=scheduling,
            docket_scheme=docket_scheme(settings),
            requests=api.request_stats(),
            services=services, events=events, retention=self._retention, runs=runs,
            outcomes=outcomes, limits=limits, readiness=readiness,
            vacuum_kinds=vacuum_kinds(settings),
        )

    async def close(self) -> None:
        await self._api.close()
        # a server that comes back may be another version
        self._events = self._outcomes = None


async def _nothing() -> None:
    return None
