"""Events: is the pipeline moving, and does cleanup keep up?

Prefect's POST /events/filter counts every event of its time window before it answers (and
reads the last 180 days when no window is given), so a careless query costs as much as the
events table is large. Every window here is narrow and bounded by a rate, never by the table:

- newest event: the last 10 minutes, then the last hour, then the last day, each tried only
  when the one before was empty (1 request on a busy server, 3 at most);
- events past retention: from the beginning of time to `now - retention`, which holds only
  what cleanup has not deleted (nothing, when it keeps up); then the first hour after that
  cut-off for the oldest event still within retention;
- flow runs past db_vacuum's retention (3.6.19+, when it deletes flow runs): the run that
  started first among those that ended before the cut-off.

Retention is read every RETENTION_EVERY_SECONDS, not every poll: it changes slowly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.prefect.client import PrefectClient
from exporter.prefect.settings import DEFAULTS, EVENTS_RETENTION, RUNS_RETENTION
from exporter.prefect.snapshot import TERMINAL_STATE_TYPES, Events, Retention
from exporter.prefect.values import iso, parse_time

NEWEST_WINDOWS = (timedelta(minutes=10), timedelta(hours=1), timedelta(days=1))
CLOCK_SKEW = timedelta(minutes=5)  # events stamped by clients slightly ahead of the server
RETENTION_EVERY_SECONDS = 300.0
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


def events_query(since: datetime, until: datetime, order: str) -> dict[str, Any]:
    return {"filter": {"occurred": {"since": iso(since), "until": iso(until)}, "order": order},
            "limit": 1}


async def _one_event(api: PrefectClient, since: datetime, until: datetime,
                     order: str) -> float | None:
    """The occurred time of the first event of the window in that order; None when empty."""
    page = await api.call("POST", "events/filter", "/events/filter",
                          events_query(since, until, order))
    events = page.get("events") if isinstance(page, Mapping) else None
    return parse_time(events[0].get("occurred")) if events else None


async def events_supported(api: PrefectClient, now: datetime) -> bool:
    """Prefect 2.x answers 404 unless PREFECT_EXPERIMENTAL_EVENTS is on."""
    page = await api.call("POST", "events/filter", "/events/filter",
                          {**events_query(now - NEWEST_WINDOWS[0], now, "DESC"), "limit": 0},
                          optional=True)
    return page is not None


async def _newest_event(api: PrefectClient, now: datetime) -> tuple[float | None, float]:
    until = now + CLOCK_SKEW
    for window in NEWEST_WINDOWS:
        newest = await _one_event(api, now - window, until, "DESC")
        if newest is not None:
            return newest, window.total_seconds()
        until = now - window
    return None, NEWEST_WINDOWS[-1].total_seconds()


async def _last_run_start(api: PrefectClient, now: datetime) -> float | None:
    runs = await api.filter("flow_runs", {
        "flow_runs": {"start_time": {"is_null_": False, "before_": iso(now)}},
        "sort": "START_TIME_DESC", "limit": 1})
    return parse_time(runs[0].get("start_time")) if runs else None


async def read_events(api: PrefectClient, now: datetime) -> Events:
    (newest, looked_back), last_start = await asyncio.gather(
        _newest_event(api, now), _last_run_start(api, now))
    return Events(newest=newest, looked_back=looked_back, last_run_start=last_start)


async def _oldest_overdue_run_end(api: PrefectClient, cutoff: datetime) -> float | None:
    runs = await api.filter("flow_runs", {
        "flow_runs": {"state": {"type": {"any_": list(TERMINAL_STATE_TYPES)}},
                      "end_time": {"before_": iso(cutoff)},
                      "start_time": {"before_": iso(cutoff)},
                      "parent_task_run_id": {"is_null_": True}},
        "sort": "START_TIME_ASC", "limit": 1})
    return parse_time(runs[0].get("end_time")) if runs else None


async def read_retention(api: PrefectClient, now: datetime, settings: Mapping[str, float],
                         vacuum_kinds: frozenset[str] | None) -> Retention:
    retention = settings.get(EVENTS_RETENTION, DEFAULTS[EVENTS_RETENTION])
    cutoff = now - timedelta(seconds=retention)
    runs_retention = (settings.get(RUNS_RETENTION) if vacuum_kinds and "flow_runs" in vacuum_kinds
                      else None)
    overdue, oldest_run_end = await asyncio.gather(
        _one_event(api, BEGINNING, cutoff, "ASC"),
        _oldest_overdue_run_end(api, now - timedelta(seconds=runs_retention))
        if runs_retention else asyncio.sleep(0, None))
    oldest = overdue if overdue is not None else await _one_event(
        api, cutoff, cutoff + timedelta(hours=1), "ASC")
    return Retention(checked_at=now.timestamp(), events_retention=retention,
                     oldest_event=oldest, events_overdue=overdue is not None,
                     runs_retention=runs_retention, oldest_overdue_run_end=oldest_run_end)
