"""Concurrency limits, and whether their slots come back.

Global (v2) limits from /v2/concurrency_limits/filter: name, limit, active_slots (the API does
not give denied slots). Tag limits from /concurrency_limits/filter, each with the task runs
holding its slots; from Prefect 3.4.19 they are also v2 limits named `tag:<tag>`, read once.
A limit full for long while fewer of its possible holders run than it has active slots has
leaked them: runs that ended without releasing (a crashed process, a slot taken without its
context manager).

Requests: 2 lists, 1 count of running task runs, and 1 count per tag limit holding slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.prefect.client import PrefectClient
from exporter.prefect.snapshot import ConcurrencyLimit, Limits

LIST_LIMIT = 200


class Saturation:
    """When each limit was first seen full, across polls (the source keeps one)."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def update(self, limits: Sequence[tuple[str, bool]], now: float) -> dict[str, float]:
        """(name, full now) -> since when each full limit has been full."""
        self._since = {name: self._since.get(name, now) for name, full in limits if full}
        return dict(self._since)


def _holders_query(ids: Sequence[str]) -> dict[str, Any]:
    return {"task_runs": {"id": {"any_": list(ids)}, "state": {"type": {"any_": ["RUNNING"]}}}}


async def _tag_limit(api: PrefectClient, row: Mapping[str, Any]) -> ConcurrencyLimit:
    holders = [str(h) for h in row.get("active_slots") or []]
    running = await api.count("task_runs", _holders_query(holders)) if holders else 0
    return ConcurrencyLimit(name=f"tag:{row.get('tag', '')}",
                            slots=int(row.get("concurrency_limit") or 0),
                            active_slots=len(holders), active=True, holders_running=running,
                            saturated_since=None)


def _global_limit(row: Mapping[str, Any]) -> ConcurrencyLimit:
    return ConcurrencyLimit(name=str(row.get("name", "")), slots=int(row.get("limit") or 0),
                            active_slots=int(row.get("active_slots") or 0),
                            active=bool(row.get("active", True)), holders_running=None,
                            saturated_since=None)


async def read_limits(api: PrefectClient, now: float, saturation: Saturation) -> Limits:
    v2, tags, running = await asyncio.gather(
        api.call("POST", "v2/concurrency_limits/filter", "/v2/concurrency_limits/filter",
                 {"limit": LIST_LIMIT}, optional=True),
        api.call("POST", "concurrency_limits/filter", "/concurrency_limits/filter",
                 {"limit": LIST_LIMIT}, optional=True),
        api.count("task_runs", {"task_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}))
    by_name = {limit.name: limit for limit in (_global_limit(r) for r in v2 or []
                                               if isinstance(r, Mapping))}
    tag_rows = [r for r in tags or [] if isinstance(r, Mapping)]
    for limit in await asyncio.gather(*(_tag_limit(api, r) for r in tag_rows)):
        # 3.4.19+: the same limit is also a v2 one named tag:<tag>; keep the v2 counter (the
        # slots actually taken) and the holders that the v1 view names
        v2_twin = by_name.get(limit.name)
        by_name[limit.name] = (limit if v2_twin is None else ConcurrencyLimit(
            v2_twin.name, v2_twin.slots, v2_twin.active_slots, v2_twin.active,
            limit.holders_running, None))
    since = saturation.update(
        [(n, lim.active and lim.slots > 0 and lim.active_slots >= lim.slots)
         for n, lim in by_name.items()], now)
    limits = tuple(ConcurrencyLimit(lim.name, lim.slots, lim.active_slots, lim.active,
                                    lim.holders_running, since.get(name))
                   for name, lim in sorted(by_name.items()))
    return Limits(limits=limits, running_task_runs=running)
