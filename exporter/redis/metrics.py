"""Redis snapshot -> metric families. Pure: no I/O, no clock. The names are
oliver006/redis_exporter's where they overlap (exporter/info.go, exporter/streams.go: the same
names and the same `db` and `stream`/`group` labels, `target` added), so its dashboards keep
working; ours beside them say what redis_exporter cannot: which groups have a live consumer,
how old the oldest entry is, and the backlog judged from the ids. Streams and groups come
from the target and are bounded like every such label; consumer names never become labels."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter.labels import Folder, bounded_max, bounded_sum
from exporter.metricspec import MetricOptions, MetricSpec, Specs
from exporter.redis.snapshot import RedisSnapshot, Stream, id_ms

# Prefect's streams and groups keep their names whatever else the keyspace holds.
PREFECT_STREAMS = frozenset({"events", "actions", "prefect:stream"})
PREFECT_GROUPS = frozenset({"event-persister", "reactive-triggers", "task-run-recorder",
                            "docket-workers"})
_ALWAYS = 2**62  # the weight that keeps a value in keep_top


_redis = Specs("redis")


STREAM_LABELS = "target db stream"
GROUP_LABELS = "target db stream group"

UP = _redis("redis_up", "target", "1 if the last poll of this Redis succeeded, else 0.")
INSTANCE_INFO = _redis("redis_instance_info", "target redis_version redis_mode maxmemory_policy",
                       "Always 1; INFO's redis_version, redis_mode and maxmemory_policy.")
MEMORY_USED = _redis("redis_memory_used_bytes", "target", "INFO used_memory.")
MEMORY_MAX = _redis("redis_memory_max_bytes", "target",
                    "INFO maxmemory (0: no limit). With maxmemory-policy noeviction, writes "
                    "fail at the limit: Prefect's events and Docket's tasks stop.")
CONNECTED_CLIENTS = _redis("redis_connected_clients", "target", "INFO connected_clients.")
DB_KEYS = _redis("redis_db_keys", "target db", "INFO keyspace: keys in each database.")
STREAM_LENGTH = _redis("redis_stream_length", STREAM_LABELS,
                       "XINFO STREAM length: entries in the stream.")
STREAM_GROUPS = _redis("redis_stream_groups", STREAM_LABELS,
                       "XINFO STREAM groups: consumer groups of the stream.")
STREAM_OLDEST_AGE = _redis(
    "redis_stream_oldest_entry_age_seconds", STREAM_LABELS,
    "Age of the stream's first entry, from its id. Growing without bound: the stream is not "
    "trimmed (prefect-redis trims to what the groups have read: an abandoned group may hold it).")
GROUP_CONSUMERS = _redis("redis_stream_group_consumers", GROUP_LABELS,
                         "XINFO GROUPS consumers: consumers the group knows, live or not.")
GROUP_CONSUMERS_ACTIVE = _redis(
    "redis_stream_group_consumers_active", GROUP_LABELS,
    "Consumers of the group idle for less than PREFECT_PG_EXPORTER_REDIS_CONSUMER_IDLE_SECONDS "
    "(XINFO CONSUMERS idle). 0 on Docket's docket-workers: no background service runs.")
GROUP_PENDING = _redis("redis_stream_group_messages_pending", GROUP_LABELS,
                       "XINFO GROUPS pending: delivered to a consumer and not acknowledged.")
GROUP_LAG = _redis("redis_stream_group_lag", GROUP_LABELS,
                   "XINFO GROUPS lag as Redis reports it (7.0+; absent when Redis cannot tell). "
                   "Redis 7.0 may report a lag with everything delivered: see "
                   "redis_stream_group_undelivered_messages.")
GROUP_UNDELIVERED = _redis(
    "redis_stream_group_undelivered_messages", GROUP_LABELS,
    "Entries not yet delivered to the group, judged from the ids: 0 when its "
    "last-delivered-id is the stream's last-generated-id, else Redis's lag (or the stream's "
    "length when Redis cannot tell).")
POLL_COMMANDS = _redis("redis_poll_commands", "target",
                       "Commands the last poll sent: bounded, whatever the keyspace's size.")

SPECS: tuple[MetricSpec, ...] = (
    UP, INSTANCE_INFO, MEMORY_USED, MEMORY_MAX, CONNECTED_CLIENTS, DB_KEYS, STREAM_LENGTH,
    STREAM_GROUPS, STREAM_OLDEST_AGE, GROUP_CONSUMERS, GROUP_CONSUMERS_ACTIVE, GROUP_PENDING,
    GROUP_LAG, GROUP_UNDELIVERED, POLL_COMMANDS)


def redis_families(snap: RedisSnapshot, options: MetricOptions) -> Iterator[Metric]:
    target = snap.target
    yield INSTANCE_INFO.sample([target, snap.version, snap.mode, snap.maxmemory_policy], 1)
    for metric_spec, value in ((MEMORY_USED, snap.used_memory), (MEMORY_MAX, snap.maxmemory),
                               (CONNECTED_CLIENTS, snap.connected_clients),
                               (POLL_COMMANDS, snap.commands)):
        yield metric_spec.sample([target], value)
    keys = DB_KEYS.family()
    for db, count in snap.db_keys.items():
        keys.add_metric([target, db], count)
    yield keys
    yield from _streams(snap, options.label_top_n)


def _streams(snap: RedisSnapshot, top_n: int) -> Iterator[Metric]:
    db = f"db{snap.db}"
    streams = Folder({s.key: _ALWAYS if s.key in PREFECT_STREAMS else s.length
                      for s in snap.streams}, top_n)
    length, groups, oldest = (STREAM_LENGTH.family(), STREAM_GROUPS.family(),
                              STREAM_OLDEST_AGE.family())
    for key, value in bounded_sum((streams[s.key], s.length) for s in snap.streams).items():
        length.add_metric([snap.target, db, key], value)
    for key, value in bounded_sum((streams[s.key], len(s.groups))
                                  for s in snap.streams).items():
        groups.add_metric([snap.target, db, key], value)
    ages = ((streams[s.key], snap.taken_at - ms / 1000) for s in snap.streams
            if (ms := id_ms(s.first_entry_id)) is not None)
    for key, age in bounded_max(ages).items():
        oldest.add_metric([snap.target, db, key], max(0.0, age))
    yield from (length, groups, oldest)
    yield from _groups(snap, streams, db, top_n)


def _groups(snap: RedisSnapshot, streams: Folder, db: str, top_n: int) -> Iterator[Metric]:
    rows: dict[MetricSpec, list[tuple[tuple[str, str], float]]] = {
        s: [] for s in (GROUP_CONSUMERS, GROUP_CONSUMERS_ACTIVE, GROUP_PENDING, GROUP_LAG,
                        GROUP_UNDELIVERED)}
    for stream in snap.streams:
        names = _group_folder(stream, top_n)
        for g in stream.groups:
            key = (streams[stream.key], names[g.name])
            rows[GROUP_CONSUMERS].append((key, g.consumers))
            rows[GROUP_CONSUMERS_ACTIVE].append(
                (key, g.active_consumers(snap.consumer_idle_limit_seconds)))
            rows[GROUP_PENDING].append((key, g.pending))
            rows[GROUP_UNDELIVERED].append((key, stream.undelivered(g)))
            if g.lag is not None:
                rows[GROUP_LAG].append((key, g.lag))
    for metric_spec, values in rows.items():
        metric = metric_spec.family()
        for (stream_label, group_label), value in bounded_sum(values).items():
            metric.add_metric([snap.target, db, stream_label, group_label], value)
        yield metric


def _group_folder(stream: Stream, top_n: int) -> Folder:
    """A stream's groups: Prefect's keep their names, then the most behind."""
    return Folder({g.name: _ALWAYS if g.name in PREFECT_GROUPS
                   else g.pending + stream.undelivered(g) for g in stream.groups}, top_n)
