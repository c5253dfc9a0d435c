"""The Redis findings in Prefect's terms, on hand-made snapshots, and the incidents that
follow them exactly."""

from __future__ import annotations

from exporter.diagnosis import diagnose
from exporter.finding import Context, SourceFailure
from exporter.kinds import BY_NAME
from exporter.source import Snapshot
from exporter.thresholds import thresholds
from tests.factories import (
    redis_group,
    redis_snapshot,
    redis_stream,
    rich_prefect,
    rich_redis,
)

LAST = "1000-9"


def checks(*snapshots: Snapshot) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    return {f.check: (f.severity, f.title, f.evidence) for f in diagnose(list(snapshots))
            if f.check.startswith(("prefect_services", "prefect_events_not", "redis_"))}


def observed(*snapshots: Snapshot) -> set[tuple[str, str]]:
    ctx = Context(thresholds(), snapshots)
    return {(o.kind, o.severity) for s in snapshots
            for o in BY_NAME["redis"].observe(s, ctx)}


def docket(*idle: float) -> Snapshot:
    return redis_snapshot(redis_stream("prefect:stream", redis_group("docket-workers", LAST,
                                                                     idle),
                                       last_generated_id=LAST), target="docket", db=1)


def test_healthy_prefect_redis_is_quiet() -> None:
    events = redis_stream("events", redis_group("event-persister", LAST, (0.1,), lag=10),
                          redis_group("reactive-triggers", LAST, (2.0,)),
                          last_generated_id=LAST)
    assert checks(redis_snapshot(events), docket(0.5, 4.0)) == {}
    assert observed(redis_snapshot(events), docket(0.5)) == set()


def test_prefect_services_down_without_an_active_docket_worker_names_the_api_too() -> None:
    events = redis_stream("events", redis_group("event-persister", "1000-2", (300.0,), lag=7),
                          last_generated_id=LAST)
    found = checks(docket(75.0, 80.0), redis_snapshot(events),
                   rich_prefect(1000.0, "api-a"), rich_prefect(1000.0, "api-b"))
    severity, title, evidence = found["prefect_services_down"]
    assert severity == "critical" and "docket-workers" in title
    assert "2 consumer(s) known, 0 active" in evidence[0]
    assert evidence[-1] == "meanwhile the Prefect API answers: api-a, api-b"
    assert observed(docket(75.0)) == {("prefect_services_down", "critical")}
    # a worker that read within the limit is alive, however many dead ones are listed
    assert "prefect_services_down" not in checks(docket(75.0, 80.0, 59.0))


def test_a_docket_nobody_works_for_is_not_a_dead_worker() -> None:
    # seen on 3.8.8: the API replicas (--no-services) create `prefect-server:stream` with an
    # empty docket-workers group; the services process works on `prefect:stream`
    unused = redis_stream("prefect-server:stream", redis_group("docket-workers", LAST, ()),
                          last_generated_id=LAST)
    working = redis_stream("prefect:stream", redis_group("docket-workers", LAST, (0.1,)),
                           last_generated_id=LAST)
    assert checks(redis_snapshot(unused, working)) == {}
    assert checks(redis_snapshot(unused)) == {}
    # tasks wait in a group that never had a worker: down
    waiting = redis_stream("prefect:stream", redis_group("docket-workers", "1000-1", (), lag=3),
                           last_generated_id=LAST)
    assert checks(redis_snapshot(waiting))["prefect_services_down"][0] == "critical"


def test_prefect_events_not_persisted_stalled_is_critical_behind_is_a_warning() -> None:
    stalled = redis_stream("events", redis_group("event-persister", "1000-2", (), lag=7),
                           last_generated_id=LAST, length=20)
    severity, title, _ = checks(redis_snapshot(stalled))["prefect_events_not_persisted"]
    assert severity == "critical" and "7 event(s)" in title
    behind = redis_stream("events", redis_group("event-persister", "1000-2", (0.1,), lag=1500),
                          last_generated_id=LAST)
    assert checks(redis_snapshot(behind))["prefect_events_not_persisted"][0] == "warning"
    reading = redis_stream("events", redis_group("event-persister", "1000-2", (0.1,), lag=999),
                           last_generated_id=LAST)
    assert checks(redis_snapshot(reading)) == {}
    assert observed(redis_snapshot(stalled)) == {("prefect_events_not_persisted", "critical")}


def test_redis_stream_group_abandoned_only_while_the_stream_moves_on() -> None:
    snap = rich_redis(10_000.0)
    severity, title, evidence = checks(snap)["redis_stream_group_abandoned"]
    assert severity == "warning" and "ephemeral-old on events" in title
    assert "events holds 500 entries, the oldest 60min old" in evidence
    # every group stopped (the services are down): that is not one group abandoned
    dead = redis_stream("events", redis_group("reactive-triggers", "1000-2", (900.0,), lag=3),
                        redis_group("other", "1000-1", (900.0,), lag=4), last_generated_id=LAST)
    assert "redis_stream_group_abandoned" not in checks(redis_snapshot(dead))


def test_dead_docket_consumers_beside_a_reading_worker_are_info() -> None:
    """Two restarts of the services left two consumers an hour and a day idle beside the
    worker that reads: info, counted, with how to remove them safely."""
    severity, title, evidence = checks(docket(0.5, 3700.0, 86_400.0))[
        "redis_stream_group_dead_consumers"]
    assert severity == "info"
    assert title == ("Group docket-workers on prefect:stream lists 2 dead consumer(s): idle for "
                     "over 60min while 1 other(s) read")
    assert evidence[1].startswith("the longest idle for 24.0h; ")
    assert evidence[2] == "XINFO CONSUMERS prefect:stream docket-workers lists them by name, " \
                          "with idle and pending"
    # info: the doctor exits 0, and no incident follows it
    assert observed(docket(0.5, 3700.0)) == set()
    # idle under the threshold (a restart half an hour ago), or threshold lowered
    assert "redis_stream_group_dead_consumers" not in checks(docket(0.5, 1800.0))
    found = diagnose([docket(0.5, 1800.0)], overrides={"redis_dead_consumer_seconds": 900})
    assert [f.check for f in found] == ["redis_stream_group_dead_consumers"]
    # nobody reads: the services are down, which says so; not dead consumers beside readers
    assert set(checks(docket(3700.0, 86_400.0))) == {"prefect_services_down"}
    # never below the active limit: a consumer that counts as active is not dead
    assert diagnose([docket(0.5, 30.0)], overrides={"redis_dead_consumer_seconds": 10}) == []


def test_redis_memory_near_max_warns_then_pages_and_no_limit_is_quiet() -> None:
    assert "redis_memory_near_max" not in checks(redis_snapshot(used_memory=10**9))
    assert checks(redis_snapshot(used_memory=85, maxmemory=100))[
        "redis_memory_near_max"][0] == "warning"
    severity, title, evidence = checks(redis_snapshot(used_memory=96, maxmemory=100))[
        "redis_memory_near_max"]
    assert (severity, title) == ("critical", "Redis uses 96% of its maxmemory")
    assert "maxmemory-policy noeviction" in evidence[0]
    assert observed(redis_snapshot(used_memory=96, maxmemory=100)) == {
        ("redis_memory_near_max", "critical")}


def test_source_down_for_redis_is_critical_and_says_what_stops_a_replica_is_named() -> None:
    found = diagnose([], [SourceFailure("redis", "messaging", "cannot connect to r:6379/0"),
                          SourceFailure("prefect", "api-b", "http://b:4200/api: refused")])
    by_target = {f.target: f for f in found}
    assert by_target["messaging"].severity == "critical"
    assert "Docket's background services" in by_target["messaging"].evidence[1]
    assert by_target["api-b"].title == "cannot read prefect api-b"
    assert by_target["api-b"].severity == "warning"
