"""Are Prefect's background services alive? Prefect has no health endpoint for them; what they
leave behind says it:

- the late_runs service marks SCHEDULED runs Late once they are `after_seconds` overdue, every
  `loop_seconds`: runs overdue by more than that plus two loops and still named "Scheduled"
  mean it is not running;
- the scheduler keeps future runs (tagged auto-scheduled) for every active schedule: a
  deployment that had auto-scheduled runs within the last day and has no future one means it is
  not running (or its schedule was just deactivated: Prefect deletes the future runs then).

(The API server's own database pool is judged by the probe, source.py: GET /api/ready beside
GET /api/health, at the start of every poll.)

A constant number of requests: 2 deployment counts, 1 + 1 per work pool counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from exporter.prefect.client import PrefectClient
from exporter.prefect.filters import in_pool, state_types
from exporter.prefect.settings import DEFAULTS, LATE_AFTER, LATE_LOOP
from exporter.prefect.snapshot import Services
from exporter.prefect.values import iso

AUTO_SCHEDULED = "auto-scheduled"  # the tag Prefect's scheduler puts on the runs it creates
RECENTLY = timedelta(days=1)


def unmarked_filter(cutoff: datetime, pool: str | None = None) -> dict[str, Any]:
    """SCHEDULED runs still named "Scheduled" whose start is before cutoff: what the late_runs
    service selects (it keys on next_scheduled_start_time, and only that state name)."""
    return in_pool({"flow_runs": {
        "state": {"type": {"any_": ["SCHEDULED"]}, "name": {"any_": ["Scheduled"]}},
        "next_scheduled_start_time": {"before_": iso(cutoff)}}}, pool)


def recently_scheduled_filter(now: datetime) -> dict[str, Any]:
    """Deployments (not paused) with an auto-scheduled run expected within the last day or
    later: the ones the scheduler is looking after."""
    return {"deployments": {"paused": {"eq_": False}},
            "flow_runs": {"tags": {"all_": [AUTO_SCHEDULED]},
                          "expected_start_time": {"after_": iso(now - RECENTLY)}}}


def with_future_runs_filter(now: datetime) -> dict[str, Any]:
    return {"deployments": {"paused": {"eq_": False}},
            "flow_runs": {**state_types("SCHEDULED"), "tags": {"all_": [AUTO_SCHEDULED]},
                          "expected_start_time": {"after_": iso(now)}}}


def unmarked_grace(settings: Mapping[str, float]) -> float:
    """late_runs.after_seconds plus two of its loops: past that, an overdue run is unmarked."""
    after = settings.get(LATE_AFTER, DEFAULTS[LATE_AFTER])
    loop = settings.get(LATE_LOOP, DEFAULTS[LATE_LOOP])
    return after + 2 * loop


async def read_services(api: PrefectClient, now: datetime, settings: Mapping[str, float],
                        pools: Sequence[str]) -> Services:
    grace = unmarked_grace(settings)
    cutoff = now - timedelta(seconds=grace)
    total, by_pool, recent, with_future = await asyncio.gather(
        api.count("flow_runs", unmarked_filter(cutoff)),
        asyncio.gather(*(api.count("flow_runs", unmarked_filter(cutoff, p)) for p in pools)),
        api.count("deployments", recently_scheduled_filter(now)),
        api.count("deployments", with_future_runs_filter(now)))
    return Services(
        unmarked_overdue=total,
        unmarked_overdue_by_pool=dict(zip(pools, by_pool, strict=True)),
        unmarked_after_seconds=grace, recently_scheduled_deployments=recent,
        deployments_without_future_runs=max(0, recent - with_future))
