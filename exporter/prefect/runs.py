"""Runs that never finish, and how runs end: stuck runs, zombies, outcomes.

- Stuck: Prefect's API filters on no state timestamp, so one /flow_runs/filter takes the
  PENDING, RUNNING, CANCELLING and PAUSED runs, the longest-scheduled first (at most
  STUCK_SAMPLE), and each run's own state timestamp says how long it has been there. There are
  usually far fewer than that in those states; when there are more, the counts cover the sample
  (`prefect_flow_runs_stuck_sampled` says so) and the oldest are in it.
- Zombies: RUNNING runs whose `prefect.flow-run.heartbeat` events (flow engine, on by default
  from Prefect 3.6.22; PREFECT_FLOWS_HEARTBEAT_FREQUENCY) stopped. One count-by/resource gives
  the latest heartbeat of every run that sent one lately. Where no heartbeat was seen for a day
  the exporter cannot tell a zombie from a run without heartbeats: it says so and counts none.
- Outcomes: runs that ended within the window, by terminal state type and work pool, counted
  (end_time filters exist from Prefect 3.0.4; before 3.6.14 a run that ended without ever
  running, e.g. cancelled while scheduled, has no end_time and is not counted).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from exporter.prefect.client import PrefectClient
from exporter.prefect.filters import in_pool, state_types
from exporter.prefect.snapshot import (
    TERMINAL_STATE_TYPES,
    UNFINISHED_STATE_TYPES,
    Outcomes,
    RunHealth,
    StuckGroup,
)
from exporter.prefect.values import iso, parse_time

UNFINISHED = UNFINISHED_STATE_TYPES
TERMINAL = TERMINAL_STATE_TYPES
STUCK_SAMPLE = 200  # the server's default page limit
HEARTBEAT = "prefect.flow-run.heartbeat"
RUN_RESOURCE = "prefect.flow-run."
HEARTBEATS_SEEN_WITHIN = timedelta(days=1)


def stuck_groups(runs: Sequence[Mapping[str, Any]], now: float, stuck_after: float,
                 pools: Sequence[str]) -> dict[tuple[str, str], StuckGroup]:
    """(work pool, state type) -> runs in that state longer than stuck_after, and the oldest
    one's time in state. Runs of unlisted pools (or none) under ''."""
    listed = set(pools)
    groups: dict[tuple[str, str], StuckGroup] = {}
    for run in runs:
        state = run.get("state") if isinstance(run.get("state"), Mapping) else {}
        since = parse_time(state.get("timestamp")) if state else None
        state_type = str(run.get("state_type") or (state or {}).get("type") or "")
        if since is None or state_type not in UNFINISHED:
            continue
        pool = str(run.get("work_pool_name") or "")
        key = (pool if pool in listed else "", state_type)
        in_state = max(0.0, now - since)
        group = groups.get(key, StuckGroup(0, 0.0))
        groups[key] = StuckGroup(group.stuck + (in_state > stuck_after),
                                 max(group.oldest_seconds, in_state))
    return groups


def heartbeat_query(since: datetime, until: datetime) -> dict[str, Any]:
    """The latest heartbeat of every run that sent one in the window (end_time of each row).
    Prefect validates the window against time buckets even for this count: a week's bucket."""
    return {"filter": {"occurred": {"since": iso(since), "until": iso(until)},
                       "event": {"name": [HEARTBEAT]},
                       "resource": {"id_prefix": [RUN_RESOURCE]}},
            "time_unit": "week", "time_interval": 1}


def without_heartbeat(runs: Sequence[Mapping[str, Any]], latest: Mapping[str, float],
                      now: float, timeout: float, pools: Sequence[str]) -> dict[str, int]:
    """RUNNING runs running longer than timeout whose latest heartbeat is older than that (or
    absent), by work pool ('' for unlisted pools)."""
    listed = set(pools)
    zombies: Counter[str] = Counter()
    for run in runs:
        started = parse_time(run.get("start_time"))
        if run.get("state_type") != "RUNNING" or started is None or now - started <= timeout:
            continue
        last = latest.get(f"{RUN_RESOURCE}{run.get('id')}")
        if last is None or now - last > timeout:
            pool = str(run.get("work_pool_name") or "")
            zombies[pool if pool in listed else ""] += 1
    return dict(zombies)


async def _latest_heartbeats(api: PrefectClient, now: datetime,
                             timeout: float) -> dict[str, float]:
    rows = await api.call("POST", "events/count-by/resource", "/events/count-by/resource",
                          heartbeat_query(now - timedelta(seconds=2 * timeout), now))
    if not isinstance(rows, list):
        return {}
    return {str(r.get("value")): t for r in rows if isinstance(r, Mapping)
            and (t := parse_time(r.get("end_time"))) is not None}


async def _heartbeats_seen(api: PrefectClient, now: datetime) -> bool:
    page = await api.call("POST", "events/filter", "/events/filter", {
        "filter": {"occurred": {"since": iso(now - HEARTBEATS_SEEN_WITHIN), "until": iso(now)},
                   "event": {"name": [HEARTBEAT]}}, "limit": 1})
    return bool(isinstance(page, Mapping) and page.get("events"))


def ended_filter(since: datetime, state_type: str, pool: str | None = None) -> dict[str, Any]:
    return in_pool({"flow_runs": {**state_types(state_type), "end_time": {"after_": iso(since)}}},
                   pool)


async def outcomes_supported(api: PrefectClient, now: datetime) -> bool:
    """Whether the server filters runs on end_time (3.0.4+; before, HTTP 422): asked once
    with one count, so an older server is not sent every outcome count each poll."""
    return await api.count("flow_runs", ended_filter(now, TERMINAL[0]),
                           unsupported=(422,)) is not None


async def read_outcomes(api: PrefectClient, now: datetime, window: float,
                        pools: Sequence[str]) -> Outcomes | None:
    """Runs ended within the window by state type, in all and per listed pool. None where the
    server cannot filter on end_time (before 3.0.4: HTTP 422)."""
    since = now - timedelta(seconds=window)
    scopes: list[str | None] = [None, *pools]
    counts = await asyncio.gather(*(api.count("flow_runs", ended_filter(since, t, p),
                                              unsupported=(422,))
                                    for p in scopes for t in TERMINAL))
    if any(c is None for c in counts):
        return None
    values = iter(counts)
    by_scope = {p: {t: int(next(values) or 0) for t in TERMINAL} for p in scopes}
    return Outcomes(window_seconds=window, totals=by_scope.pop(None),
                    by_pool={str(p): c for p, c in by_scope.items()})


async def read_runs(api: PrefectClient, now: datetime, pools: Sequence[str], *,
                    stuck_after: float, heartbeat_timeout: float,
                    events: bool) -> RunHealth:
    runs = await api.filter("flow_runs", {"flow_runs": state_types(*UNFINISHED),
                                          "sort": "EXPECTED_START_TIME_ASC",
                                          "limit": STUCK_SAMPLE})
    stamp = now.timestamp()
    heartbeats: bool | None = None
    zombies: dict[str, int] | None = None
    if events:
        latest = await _latest_heartbeats(api, now, heartbeat_timeout)
        heartbeats = bool(latest) or await _heartbeats_seen(api, now)
        if heartbeats:
            zombies = without_heartbeat(runs, latest, stamp, heartbeat_timeout, pools)
    return RunHealth(stuck=stuck_groups(runs, stamp, stuck_after, pools),
                     sampled=len(runs), sample_limit=STUCK_SAMPLE,
                     stuck_after_seconds=stuck_after, heartbeats=heartbeats,
                     without_heartbeat=zombies, heartbeat_timeout_seconds=heartbeat_timeout)
