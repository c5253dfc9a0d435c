"""The Redis incidents a snapshot shows, observed exactly when the doctor's findings would be
(both judge the groups and the memory with the functions of checks.py)."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context
from exporter.incidents.model import Observation, evidence_of
from exporter.redis.checks import (
    EVENTS_NOT_PERSISTED,
    GROUP_ABANDONED,
    MEMORY_NEAR_MAX,
    SERVICES_DOWN,
    GroupState,
    abandoned,
    memory_ratio,
    persister,
    services_down,
)
from exporter.redis.snapshot import RedisSnapshot


def _group_evidence(g: GroupState) -> dict[str, object]:
    return {"stream": g.stream.key, "group": g.group.name, "consumers": g.group.consumers,
            "active_consumers": g.active, "undelivered": g.undelivered,
            "pending": g.group.pending, "least_idle_seconds": g.least_idle,
            "stream_length": g.stream.length}


def redis_incidents(redis: RedisSnapshot, ctx: Context) -> Iterator[Observation]:
    down = services_down(redis)
    if down is not None:
        yield Observation(
            SERVICES_DOWN.id, redis.target, (("stream", down.stream.key),), "critical",
            "Prefect's background services are not running (no active Docket worker)",
            evidence_of(_group_evidence(down)))
    stalled = persister(redis, ctx.thresholds)
    if stalled is not None:
        g, severity = stalled
        yield Observation(
            EVENTS_NOT_PERSISTED.id, redis.target, (("group", g.group.name),), severity,
            f"{g.undelivered} Prefect event(s) not yet delivered to the event persister",
            evidence_of(_group_evidence(g)), magnitude=g.undelivered)
    for g in abandoned(redis):
        yield Observation(
            GROUP_ABANDONED.id, redis.target,
            (("stream", g.stream.key), ("group", g.group.name)), "warning",
            f"Consumer group {g.name} is no longer read", evidence_of(_group_evidence(g)),
            magnitude=g.undelivered)
    memory = memory_ratio(redis, ctx.thresholds)
    if memory is not None:
        ratio, severity = memory
        yield Observation(
            MEMORY_NEAR_MAX.id, redis.target, (), severity,
            f"Redis uses {ratio:.0%} of its maxmemory",
            evidence_of({"used_memory": redis.used_memory, "maxmemory": redis.maxmemory,
                         "maxmemory_policy": redis.maxmemory_policy}), magnitude=ratio)
