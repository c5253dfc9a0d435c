"""Redis metrics on hand-made snapshots: redis_exporter's names, ours beside them, the backlog
judged from the ids, bounded stream and group labels, no consumer names."""

from __future__ import annotations

from exporter.metricspec import MetricOptions
from exporter.redis.metrics import redis_families
from exporter.redis.snapshot import RedisSnapshot
from tests.factories import redis_group, redis_snapshot, redis_stream, rich_redis
from tests.helpers import Scrape, render


def scrape(snap: RedisSnapshot, top_n: int = 20) -> Scrape:
    return render(redis_families(snap, MetricOptions(label_top_n=top_n)))


def test_redis_exporter_names_with_target_and_db() -> None:
    s = scrape(rich_redis(1000.0))
    labels = {"target": "messaging", "db": "db0", "stream": "events"}
    assert s.value("redis_memory_used_bytes", target="messaging") == 50_000_000
    assert s.value("redis_memory_max_bytes", target="messaging") == 100_000_000
    assert s.value("redis_connected_clients") == 5
    assert s.value("redis_stream_length", **labels) == 500
    assert s.value("redis_stream_groups", **labels) == 4
    assert s.value("redis_stream_group_consumers", **labels, group="event-persister") == 2
    assert s.value("redis_stream_group_messages_pending", **labels,
                   group="task-run-recorder") == 1
    assert s.value("redis_stream_group_lag", **labels, group="ephemeral-old") == 420
    assert s.value("redis_db_keys", db="db1") == 3
    assert s.labelsets("redis_instance_info") == [
        {"target": "messaging", "redis_version": "7.0.15", "redis_mode": "standalone",
         "maxmemory_policy": "noeviction"}]


def test_active_consumers_are_those_idle_less_than_the_limit() -> None:
    group = redis_group("docket-workers", consumers_idle=(1.0, 59.9, 60.0, 3600.0))
    s = scrape(redis_snapshot(redis_stream("prefect:stream", group)))
    assert s.value("redis_stream_group_consumers", group="docket-workers") == 4
    assert s.value("redis_stream_group_consumers_active", group="docket-workers") == 2
    s = scrape(redis_snapshot(redis_stream("prefect:stream", group),
                              consumer_idle_limit_seconds=30.0))
    assert s.value("redis_stream_group_consumers_active", group="docket-workers") == 1


def test_undelivered_is_judged_from_the_ids_not_redis_lag() -> None:
    # Redis 7.0 reported lag 10 with everything delivered (DESIGN.md): the ids say 0
    caught_up = redis_group("event-persister", "1000-5", lag=10)
    behind = redis_group("reactive-triggers", "1000-2", lag=3)
    unknown = redis_group("task-run-recorder", "999-0", lag=None, entries_read=None)
    s = scrape(redis_snapshot(redis_stream("events", caught_up, behind, unknown, length=40,
                                           last_generated_id="1000-5")))
    assert s.value("redis_stream_group_lag", group="event-persister") == 10
    assert s.value("redis_stream_group_undelivered_messages", group="event-persister") == 0
    assert s.value("redis_stream_group_undelivered_messages", group="reactive-triggers") == 3
    # Redis cannot tell: the stream's length is the bound, and no lag sample is made up
    assert s.value("redis_stream_group_undelivered_messages", group="task-run-recorder") == 40
    assert s.find("redis_stream_group_lag", group="task-run-recorder") is None


def test_oldest_entry_age_from_the_first_id_and_none_for_an_empty_stream() -> None:
    s = scrape(rich_redis(10_000.0))
    assert s.value("redis_stream_oldest_entry_age_seconds", stream="events") == 3600.0
    assert s.find("redis_stream_oldest_entry_age_seconds", stream="actions") is None
    assert s.value("redis_stream_length", stream="actions") == 0


def test_streams_and_groups_are_bounded_and_prefects_keep_their_names() -> None:
    ephemeral = [redis_group(f"ephemeral-{i}", consumers_idle=(1.0,), pending=i)
                 for i in range(30)]
    events = redis_stream("events", redis_group("event-persister"), *ephemeral)
    others = [redis_stream(f"app:{i}", length=100 + i) for i in range(30)]
    s = scrape(redis_snapshot(events, *others), top_n=5)
    streams = {lab["stream"] for lab in s.labelsets("redis_stream_length")}
    assert len(streams) == 6 and "events" in streams and "other" in streams
    assert {"app:29", "app:28", "app:27", "app:26"} <= streams
    assert s.value("redis_stream_length", stream="other") == sum(100 + i for i in range(26))
    groups = {lab["group"] for lab in s.labelsets("redis_stream_group_consumers")}
    assert len(groups) == 6 and "event-persister" in groups and "other" in groups
    assert s.value("redis_stream_group_consumers_active", stream="events", group="other") == 26


def test_consumer_names_never_become_labels() -> None:
    s = scrape(rich_redis(1000.0))
    assert all("consumer" not in lab for _, lab, _ in s.samples)
