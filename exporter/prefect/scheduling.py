"""Is scheduling keeping up, and is anyone there to take the runs? Counts by state, the overdue
backlog, Late and upcoming runs per work pool, the pools' workers and the queues.

A constant number of requests: 5 counts by state, 5 for the totals, 1 for future runs, the
queues, and 6 per work pool (at most label_top_n pools, alphabetically).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from exporter.prefect.client import PrefectClient
from exporter.prefect.filters import (
    CURRENT_STATE_TYPES,
    backlog_filter,
    future_filter,
    in_flight_filter,
    late_filter,
    oldest_backlog_query,
    state_types,
    upcoming_filter,
)
from exporter.prefect.snapshot import PoolCounts, Readiness, Scheduling, WorkPool, WorkQueue
from exporter.prefect.values import parse_time

LIST_LIMIT = 200  # the server's default page limit: the most one request may ask for
UNPOLLED_COUNTED = 20  # NOT_READY queues whose deployments are counted one by one


def parse_work_pool(data: Mapping[str, Any], workers: Sequence[Mapping[str, Any]]) -> WorkPool:
    heartbeats = [t for w in workers if (t := parse_time(w.get("last_heartbeat_time")))]
    return WorkPool(
        name=str(data.get("name", "")), type=str(data.get("type") or ""),
        status=str(data.get("status") or "UNKNOWN"), paused=bool(data.get("is_paused")),
        concurrency_limit=data.get("concurrency_limit"),
        workers=len(workers),
        online_workers=sum(1 for w in workers if w.get("status") == "ONLINE"),
        last_heartbeat=max(heartbeats, default=None),
    )


def parse_work_queue(data: Mapping[str, Any]) -> WorkQueue:
    return WorkQueue(work_pool=str(data.get("work_pool_name") or ""),
                     name=str(data.get("name", "")), paused=bool(data.get("is_paused")),
                     concurrency_limit=data.get("concurrency_limit"), id=str(data.get("id", "")),
                     status=str(data.get("status") or ""),
                     last_polled=parse_time(data.get("last_polled")))


async def read_readiness(api: PrefectClient, queues: Sequence[WorkQueue]) -> Readiness:
    """Deployments counted by their work queue's status (Prefect's own rule: a deployment whose
    queue no worker polled lately is NOT_READY); no deployment status filter exists. One count
    per NOT_READY queue (at most UNPOLLED_COUNTED, then one for all): requests grow with the
    queues nobody polls, never with deployments or runs."""
    unpolled = [q.id for q in queues if q.status == "NOT_READY" and q.id]
    counted = unpolled[:UNPOLLED_COUNTED]
    total, in_a_queue, *per_queue = await asyncio.gather(
        api.count("deployments", {}), api.count("deployments", {"work_pool_queues": {}}),
        *(api.count("deployments", _in_queues([q])) for q in counted))
    in_unpolled = (sum(per_queue) if len(counted) == len(unpolled)
                   else await api.count("deployments", _in_queues(unpolled)))
    return Readiness(deployments=total, in_a_queue=in_a_queue, in_unpolled_queues=in_unpolled,
                     by_unpolled_queue=dict(zip(counted, per_queue, strict=True)))


def _in_queues(ids: Sequence[str]) -> dict[str, Any]:
    return {"work_pool_queues": {"id": {"any_": list(ids)}}}


async def list_work_pools(api: PrefectClient, max_pools: int) -> list[Mapping[str, Any]]:
    """The work pools the exporter labels: the first max_pools by name."""
    pools = await api.filter("work_pools", {"limit": LIST_LIMIT})
    return sorted(pools, key=lambda p: str(p.get("name", "")))[:max_pools]


async def _oldest_start(api: PrefectClient, now: datetime, pool: str | None) -> float | None:
    runs = await api.filter("flow_runs", oldest_backlog_query(now, pool))
    if not runs:
        return None
    return parse_time(runs[0].get("next_scheduled_start_time")
                      or runs[0].get("expected_start_time"))


async def _pool_counts(api: PrefectClient, now: datetime, horizon: float,
                       pool: str | None) -> PoolCounts:
    backlog, late, upcoming, in_flight, oldest = await asyncio.gather(
        api.count("flow_runs", backlog_filter(now, pool)),
        api.count("flow_runs", late_filter(pool)),
        api.count("flow_runs", upcoming_filter(now, horizon, pool)),
        api.count("flow_runs", in_flight_filter(pool)), _oldest_start(api, now, pool))
    return PoolCounts(backlog, late, upcoming, in_flight, oldest)


async def _work_pool(api: PrefectClient, data: Mapping[str, Any]) -> WorkPool:
    name = str(data.get("name", ""))
    workers = await api.filter(f"work_pools/{quote(name, safe='')}/workers",
                               {"limit": LIST_LIMIT}, "/work_pools/{name}/workers/filter")
    return parse_work_pool(data, workers)


async def read_scheduling(api: PrefectClient, now: datetime, horizon: float,
                          pools_data: Sequence[Mapping[str, Any]]) -> Scheduling:
    names = [str(p.get("name", "")) for p in pools_data]
    by_state, totals, future, pools, counts, queues = await asyncio.gather(
        asyncio.gather(*(api.count("flow_runs", {"flow_runs": state_types(t)})
                         for t in CURRENT_STATE_TYPES)),
        _pool_counts(api, now, horizon, None),
        api.count("flow_runs", future_filter(now)),
        asyncio.gather(*(_work_pool(api, p) for p in pools_data)),
        asyncio.gather(*(_pool_counts(api, now, horizon, n) for n in names)),
        api.filter("work_queues", {"limit": LIST_LIMIT}),
    )
    return Scheduling(
        runs_by_state_type=dict(zip(CURRENT_STATE_TYPES, by_state, strict=True)),
        totals=totals, scheduled_future=future, pools=tuple(pools),
        pool_counts=dict(zip(names, counts, strict=True)),
        queues=tuple(parse_work_queue(q) for q in queues if q.get("work_pool_name") in names))
