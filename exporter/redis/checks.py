"""The Redis checks of the diagnosis, in Prefect's terms: pure, snapshot and context in,
findings out. Prefect in HA (prefect-redis) publishes events to the stream `events`, read by
the groups event-persister, reactive-triggers and task-run-recorder of the background-services
process; Docket, which runs those services, reads `prefect:stream` as group docket-workers.
A group's consumers stay listed after their process died: only their idle time tells."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from exporter.finding import Check, Context, Finding, age
from exporter.redis.snapshot import Group, RedisSnapshot, Stream, id_ms

DOCKET_GROUP = "docket-workers"
EVENTS_STREAM = "events"
PERSISTER_GROUP = "event-persister"
OWN_FINDINGS = frozenset({DOCKET_GROUP, PERSISTER_GROUP})  # groups with findings of their own


SERVICES_DOWN = Check(
    "prefect_services_down", ("critical",),
    "no active consumer in Docket's workers group: Prefect's background services are not "
    "running", incident=True)
EVENTS_NOT_PERSISTED = Check(
    "prefect_events_not_persisted", ("critical", "warning"),
    "Prefect's event persister reads nothing while events wait (critical), or is behind",
    ("redis_undelivered_warning",), incident=True)
GROUP_ABANDONED = Check(
    "redis_stream_group_abandoned", ("warning",),
    "a consumer group nobody reads any more while its stream moves on (it may hold the "
    "stream's trimming)", incident=True)
DEAD_CONSUMERS = Check(
    "redis_stream_group_dead_consumers", ("info",),
    "a consumer group lists consumers idle far longer than its readers: workers that died or "
    "restarted, never removed (Docket names them after host and pid)",
    ("redis_dead_consumer_seconds",))
MEMORY_NEAR_MAX = Check(
    "redis_memory_near_max", ("critical", "warning"), "Redis near its maxmemory",
    ("redis_memory_warning_ratio", "redis_memory_critical_ratio"), incident=True)


@dataclass(frozen=True)
class GroupState:
    """A consumer group as the doctor and the incidents (incidents.py) both judge it."""

    stream: Stream
    group: Group
    active: int
    undelivered: int
    idle_limit: float

    @property
    def name(self) -> str:
        return f"{self.group.name} on {self.stream.key}"

    @property
    def least_idle(self) -> float | None:
        return min(self.group.consumer_idle_seconds, default=None)

    def describe(self) -> str:
        idle = (f", the least idle for {age(self.least_idle)}"
                if self.least_idle is not None else "")
        return (f"{self.name}: {self.group.consumers} consumer(s) known, {self.active} active "
                f"(idle < {self.idle_limit:g}s){idle}; {self.undelivered} undelivered, "
                f"{self.group.pending} pending (delivered, not acknowledged)")


def group_states(redis: RedisSnapshot) -> Iterator[GroupState]:
    for stream in redis.streams:
        for group in stream.groups:
            yield GroupState(stream, group,
                             group.active_consumers(redis.consumer_idle_limit_seconds),
                             stream.undelivered(group), redis.consumer_idle_limit_seconds)


def services_down(redis: RedisSnapshot) -> GroupState | None:
    """Docket's workers group with no active consumer: no background service runs. A worker
    that died stays listed as a consumer (Docket never removes its consumers), so a group
    with consumers and none active is a dead worker; a group that never had one is a Docket
    nobody runs workers for (the API replicas' own, `prefect-server:stream`, with
    --no-services), unless tasks wait in it. Another Docket of the same Redis with an active
    worker means the services run there."""
    dockets = [g for g in group_states(redis) if g.group.name == DOCKET_GROUP]
    if any(g.active > 0 for g in dockets):
        return None
    return next((g for g in dockets if g.group.consumers > 0 or g.undelivered > 0), None)


class Persister(NamedTuple):
    """The event persister's group, stalled (critical) or falling behind (warning)."""

    group: GroupState
    severity: str


def persister(redis: RedisSnapshot, t: Mapping[str, float]) -> Persister | None:
    for g in group_states(redis):
        if g.stream.key != EVENTS_STREAM or g.group.name != PERSISTER_GROUP:
            continue
        if g.active == 0 and g.undelivered > 0:
            return Persister(g, "critical")
        if g.undelivered > t["redis_undelivered_warning"]:
            return Persister(g, "warning")
    return None


def abandoned(redis: RedisSnapshot) -> Iterator[GroupState]:
    """Groups no consumer reads while another group of the same stream is read: their entries
    are not processed, and where prefect-redis trims to what every group has read, the
    stream cannot be trimmed past them (prefect #18606)."""
    states = list(group_states(redis))
    read = {g.stream.key for g in states if g.active > 0}
    for g in states:
        if (g.stream.key in read and g.active == 0 and g.undelivered > 0
                and g.group.name not in OWN_FINDINGS):
            yield g


class DeadConsumers(NamedTuple):
    """Consumers of a group that is read, idle past redis_dead_consumer_seconds."""

    group: GroupState
    dead: int
    longest_idle: float
    after: float  # the idle time past which a consumer counts as dead


def dead_consumers(redis: RedisSnapshot, t: Mapping[str, float]) -> Iterator[DeadConsumers]:
    """A Docket worker's consumer (named host#pid) stays in docket-workers after its process
    ends: Docket prunes its own heartbeat set, never the group (no XGROUP DELCONSUMER in
    pydocket 0.27), so every restart of the services leaves one. A consumer idle for so long
    while another consumer of its group reads is such a departed one: a live worker's idle
    stays low because Prefect's perpetual services hand it a task every few seconds (on Redis
    7.0 only a read that gets entries resets it; an empty XREADGROUP or XAUTOCLAIM does not).
    A group nobody reads is services_down's or abandoned's, not this."""
    for g in group_states(redis):
        if g.active == 0:
            continue
        after = max(t["redis_dead_consumer_seconds"], g.idle_limit)
        idle = [i for i in g.group.consumer_idle_seconds if i > after]
        if idle:
            yield DeadConsumers(g, len(idle), max(idle), after)


class Memory(NamedTuple):
    """used_memory / maxmemory past a threshold."""

    ratio: float
    severity: str


def memory_ratio(redis: RedisSnapshot, t: Mapping[str, float]) -> Memory | None:
    if redis.maxmemory <= 0:
        return None
    ratio = redis.used_memory / redis.maxmemory
    if ratio > t["redis_memory_critical_ratio"]:
        return Memory(ratio, "critical")
    if ratio > t["redis_memory_warning_ratio"]:
        return Memory(ratio, "warning")
    return None


def _api_evidence(ctx: Context) -> str:
    from exporter.prefect.snapshot import PrefectSnapshot

    apis = [p.target for p in ctx.of(PrefectSnapshot)]
    return (f"meanwhile the Prefect API answers: {', '.join(apis)}" if apis
            else "no Prefect API configured or answering beside it")


def _oldest(stream: Stream, now: float) -> str:
    ms = id_ms(stream.first_entry_id)
    return f"{stream.key} holds {stream.length} entries" + (
        f", the oldest {age(now - ms / 1000)} old" if ms is not None else "")


def services_not_running(redis: RedisSnapshot, ctx: Context) -> Iterator[Finding]:
    down = services_down(redis)
    if down is not None:
        lagging = [g.describe() for g in group_states(redis)
                   if g.stream.key == EVENTS_STREAM and g.active == 0 and g.undelivered > 0]
        yield SERVICES_DOWN.finding(
            "critical", redis.target,
            "Prefect's background services are not running: no active consumer in Docket's "
            f"{DOCKET_GROUP} group on {down.stream.key}",
            (down.describe(), *lagging, _api_evidence(ctx)),
            "Start (or restart) `prefect server services start`, or the pod that runs it, and "
            "read its log for Redis errors. The API keeps answering without it: no scheduling, "
            "no Late marking, no automations, no event persistence. After a Redis failover it "
            "may stop for good (prefect #22436): restart it.")


def events_not_persisted(redis: RedisSnapshot, ctx: Context) -> Iterator[Finding]:
    stalled = persister(redis, ctx.thresholds)
    if stalled is not None:
        g, severity = stalled
        yield EVENTS_NOT_PERSISTED.finding(
            severity, redis.target,
            f"Prefect's events are not being persisted: {g.undelivered} event(s) not yet "
            f"delivered to the {PERSISTER_GROUP} group" if severity == "critical" else
            f"Prefect's event persister is behind: {g.undelivered} event(s) not yet delivered",
            (g.describe(), _oldest(g.stream, redis.taken_at)),
            "The event persister runs in the background-services process: is it running (see "
            "prefect_services_down) and can it write to the database? Until it reads them, "
            "events are missing from the UI, the event feed and the retention counts.")


def groups_abandoned(redis: RedisSnapshot, ctx: Context) -> Iterator[Finding]:
    for g in abandoned(redis):
        yield GROUP_ABANDONED.finding(
            "warning", redis.target,
            f"Consumer group {g.name} is no longer read while the stream moves on",
            (g.describe(), _oldest(g.stream, redis.taken_at)),
            f"If nothing is meant to read it any more, remove it (XGROUP DESTROY {g.stream.key} "
            f"{g.group.name}); otherwise restart its consumer: its entries are not processed. "
            "prefect-redis releases that trim to what every group has read let it hold the "
            "stream, which grows with Redis's memory (prefect #18606; 0.3.0 leaves groups idle "
            "over 5 minutes out of the trimming): see the oldest entry's age.")


def groups_with_dead_consumers(redis: RedisSnapshot, ctx: Context) -> Iterator[Finding]:
    for d in dead_consumers(redis, ctx.thresholds):
        g = d.group
        key, name = g.stream.key, g.group.name
        yield DEAD_CONSUMERS.finding(
            "info", redis.target,
            f"Group {g.name} lists {d.dead} dead consumer(s): idle for over {age(d.after)} "
            f"while {g.active} other(s) read",
            (g.describe(),
             f"the longest idle for {age(d.longest_idle)}; each worker that ended (a restart, a "
             "crash, a scaled-down replica) stays listed: Docket names its consumers after "
             "host and pid and never removes them",
             f"XINFO CONSUMERS {key} {name} lists them by name, with idle and pending"),
            f"Remove those without pending entries: XGROUP DELCONSUMER {key} {name} <consumer> "
            "(it drops the consumer's pending entries: leave any with pending > 0 to Docket's "
            "redelivery, which claims them from the others). Harmless to Prefect otherwise; "
            "they cost memory and lengthen every XINFO CONSUMERS reply, this exporter's polls "
            "included, a little more with each restart of the services.")


def memory_near_max(redis: RedisSnapshot, ctx: Context) -> Iterator[Finding]:
    memory = memory_ratio(redis, ctx.thresholds)
    if memory is not None:
        ratio, severity = memory
        yield MEMORY_NEAR_MAX.finding(
            severity, redis.target,
            f"Redis uses {ratio:.0%} of its maxmemory",
            (f"used_memory {redis.used_memory} bytes of maxmemory {redis.maxmemory}; "
             f"maxmemory-policy {redis.maxmemory_policy}",
             *(_oldest(s, redis.taken_at) for s in redis.streams[:3])),
            "With noeviction, Prefect's writes (events, Docket's tasks, leases) fail at the "
            "limit; with an eviction policy, its streams and leases may be evicted. Find what "
            "grows (an untrimmed stream, an abandoned group) before raising maxmemory.")


CHECKS = (SERVICES_DOWN, EVENTS_NOT_PERSISTED, GROUP_ABANDONED, DEAD_CONSUMERS, MEMORY_NEAR_MAX)
RULES = (services_not_running, events_not_persisted, groups_abandoned,
         groups_with_dead_consumers, memory_near_max)
