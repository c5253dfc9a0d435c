"""The Redis source against a real Redis 7 (Debian's redis-server), read through an ACL user
allowed only the exporter's read-only commands: streams, groups and consumers the test makes,
maxmemory, Redis stopped and back, and a keyspace of 100,000 unrelated keys."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest

from lab.redis import LabRedis, LabSentinel, prefect_like_streams
from tests.helpers import StartExporter, eventually, wait_for, wait_for_value

pytestmark = pytest.mark.lab

EVENTS = {"target": "messaging", "db": "db0", "stream": "events"}
PERSISTER = {**EVENTS, "group": "event-persister"}
DOCKET = {"target": "docket", "db": "db1", "stream": "prefect:stream", "group": "docket-workers"}


def two_targets(redis: LabRedis) -> str:
    return f"messaging={redis.url(0)};docket={redis.url(1)}"


async def test_streams_groups_and_consumers_as_prefect_leaves_them(
        redis_server: LabRedis, start_exporter: StartExporter) -> None:
    prefect_like_streams(redis_server)
    exporter = await start_exporter(redis_url=two_targets(redis_server))
    s = await wait_for_value(exporter.port, "redis_up", {"target": "docket"}, 1)
    s = await wait_for(exporter.port, lambda s: s.find("redis_stream_length", **EVENTS) == 15,
                       "the events stream read")
    assert s.value("redis_up", target="messaging") == 1
    assert s.value("redis_stream_groups", **EVENTS) == 2
    assert s.value("redis_stream_group_consumers", **PERSISTER) == 1
    assert s.value("redis_stream_group_consumers_active", **PERSISTER) == 1
    assert s.value("redis_stream_group_messages_pending", **PERSISTER) == 5
    assert s.value("redis_stream_group_lag", **PERSISTER) == 10
    assert s.value("redis_stream_group_undelivered_messages", **PERSISTER) == 10
    assert s.value("redis_stream_group_undelivered_messages", **EVENTS,
                   group="reactive-triggers") == 0
    assert s.value("redis_stream_group_consumers", **EVENTS, group="reactive-triggers") == 0
    assert 0 <= s.value("redis_stream_oldest_entry_age_seconds", **EVENTS) < 60
    assert s.value("redis_stream_group_consumers_active", **DOCKET) == 1
    assert s.value("redis_db_keys", target="messaging", db="db1") == 1
    assert "worker-host-4242" not in s.text and "services-host-4242" not in s.text
    # the persister catches up and acknowledges: nothing undelivered, nothing pending
    messaging = redis_server.client(0)
    read = messaging.xreadgroup("event-persister", "services-host-4242", {"events": ">"})
    ids = [entry_id for _, entries in read for entry_id, _ in entries]
    pending = messaging.xpending_range("events", "event-persister", "-", "+", 100)
    messaging.xack("events", "event-persister", *ids, *[p["message_id"] for p in pending])
    s = await wait_for_value(exporter.port, "redis_stream_group_undelivered_messages",
                             PERSISTER, 0)
    assert s.value("redis_stream_group_messages_pending", **PERSISTER) == 0


async def test_a_consumer_idle_past_the_limit_is_no_longer_active_and_the_doctor_says_so(
        redis_server: LabRedis, start_exporter: StartExporter) -> None:
    prefect_like_streams(redis_server)
    exporter = await start_exporter(redis_url=two_targets(redis_server),
                                    redis_consumer_idle_seconds="2")
    await wait_for_value(exporter.port, "redis_stream_group_consumers_active", DOCKET, 1)
    # nobody reads Prefect's streams any more: the worker's idle time passes the limit
    s = await wait_for_value(exporter.port, "redis_stream_group_consumers_active", DOCKET, 0)
    assert s.value("redis_stream_group_consumers", **DOCKET) == 1  # still listed
    done = await asyncio.to_thread(doctor, PREFECT_PG_EXPORTER_REDIS_URL=two_targets(
        redis_server), PREFECT_PG_EXPORTER_REDIS_CONSUMER_IDLE_SECONDS="2")
    report = json.loads(done.stdout)
    assert done.returncode == 2, done.stdout + done.stderr
    checks = {(f["check"], f["target"]): f for f in report["findings"]}
    assert checks[("prefect_services_down", "docket")]["severity"] == "critical"
    assert checks[("prefect_events_not_persisted", "messaging")]["severity"] == "critical"


async def test_a_departed_docket_worker_stays_listed_and_the_doctor_says_so(
        redis_server: LabRedis) -> None:
    """A Docket worker ends (its process gone) and a new one reads on: Redis keeps the old
    consumer in the group, idle ever longer, until someone removes it; the doctor counts it
    as dead beside the one that reads (thresholds lowered to seconds)."""
    docket = redis_server.client(3)
    docket.delete("prefect:stream")
    docket.xgroup_create("prefect:stream", "docket-workers", id="$", mkstream=True)
    # each worker takes a task and acknowledges it: Redis 7.0 lists a consumer once it got one
    for consumer in ("old-host#4242", "new-host#4343"):
        docket.xadd("prefect:stream", {"task": "t"})
        [[_, [(entry_id, _)]]] = docket.xreadgroup("docket-workers", consumer,
                                                   {"prefect:stream": ">"}, count=1)
        docket.xack("prefect:stream", "docket-workers", entry_id)
    stop = threading.Event()

    def worker() -> None:
        # the new worker runs Prefect's perpetual services, a task every few seconds: what
        # keeps a live worker's idle low (on Redis 7.0 only a read that gets entries resets it;
        # an empty XREADGROUP or XAUTOCLAIM does not, seen here)
        while not stop.is_set():
            docket.xadd("prefect:stream", {"task": "t"})
            for _, entries in docket.xreadgroup("docket-workers", "new-host#4343",
                                                {"prefect:stream": ">"}, count=10):
                docket.xack("prefect:stream", "docket-workers", *[i for i, _ in entries])
            stop.wait(0.1)

    reader = threading.Thread(target=worker)
    reader.start()
    async def departed_idle_past_the_limit() -> bool:
        # the old worker's consumer idle past the doctor's 2 s (with room), the new one reading
        idle = {(n.decode() if isinstance(n := c["name"], bytes) else n): c["idle"]
                for c in docket.xinfo_consumers("prefect:stream", "docket-workers")}
        return idle["old-host#4242"] > 2500 and idle["new-host#4343"] < 1000

    try:
        await eventually(departed_idle_past_the_limit, 10,
                         "the departed worker idle past 2 s, the new one reading")
        done = await asyncio.to_thread(
            doctor, PREFECT_PG_EXPORTER_REDIS_URL=f"docket={redis_server.url(3)}",
            PREFECT_PG_EXPORTER_REDIS_CONSUMER_IDLE_SECONDS="1",
            PREFECT_PG_EXPORTER_THRESHOLDS="redis_dead_consumer_seconds=2")
    finally:
        stop.set()
        reader.join()
    assert done.returncode == 0, done.stdout + done.stderr  # info only
    report = json.loads(done.stdout)
    (found,) = [f for f in report["findings"]
                if f["check"] == "redis_stream_group_dead_consumers"]
    assert (found["severity"], found["target"]) == ("info", "docket")
    assert found["title"] == ("Group docket-workers on prefect:stream lists 1 dead "
                              "consumer(s): idle for over 2s while 1 other(s) read")
    assert "old-host" not in done.stdout  # consumer names are never shown
    assert [f["check"] for f in report["findings"]] == ["redis_stream_group_dead_consumers"]
    docket.delete("prefect:stream")


async def test_maxmemory_is_read(redis_server: LabRedis, start_exporter: StartExporter) -> None:
    exporter = await start_exporter(redis_url=redis_server.url())
    s = await wait_for_value(exporter.port, "redis_up", {}, 1)
    assert s.value("redis_memory_max_bytes") == 0
    used = s.value("redis_memory_used_bytes")
    assert used > 100_000
    redis_server.client().config_set("maxmemory", str(int(used * 1.02)))
    s = await wait_for(exporter.port, lambda s: s.value("redis_memory_max_bytes") > 0,
                       "maxmemory read")
    assert s.value("redis_memory_max_bytes") == int(used * 1.02)
    assert s.labelsets("redis_instance_info")[0]["maxmemory_policy"] == "noeviction"
    # 98% of maxmemory: the doctor's critical finding, exported for the alerts
    await wait_for(exporter.port, lambda s: s.find(
        "prefect_pg_exporter_finding", check="redis_memory_near_max",
        severity="critical") == 1, "the memory finding exported")


def doctor(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", "--format", "json"], capture_output=True,
        text=True, timeout=60, env={"PATH": os.environ["PATH"],
                                    "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "5", **env})


async def test_redis_stopped_is_down_critical_and_back(
        redis_server: LabRedis, start_exporter: StartExporter) -> None:
    exporter = await start_exporter(redis_url=f"messaging={redis_server.url()}")
    await wait_for_value(exporter.port, "redis_up", {"target": "messaging"}, 1)
    redis_server.stop()
    s = await wait_for_value(exporter.port, "redis_up", {"target": "messaging"}, 0)
    assert (s.find("prefect_pg_exporter_source_errors_total", source="redis",
                   target="messaging", reason="connect") or 0) >= 1
    assert "lab-redis-monitor-secret" not in s.text
    done = await asyncio.to_thread(doctor, PREFECT_PG_EXPORTER_REDIS_URL=redis_server.url())
    assert done.returncode == 2, done.stdout + done.stderr
    (finding,) = json.loads(done.stdout)["findings"]
    assert (finding["check"], finding["severity"]) == ("source_down", "critical")
    assert "Docket's background services" in finding["evidence"][1]
    assert "lab-redis-monitor-secret" not in done.stdout + done.stderr
    redis_server.start()
    await wait_for_value(exporter.port, "redis_up", {"target": "messaging"}, 1, timeout=30)


def scan_calls(redis: LabRedis) -> int:
    return int(redis.client().info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


async def test_100000_unrelated_keys_the_scan_stays_within_its_budget(
        redis_server: LabRedis, start_exporter: StartExporter) -> None:
    from exporter.redis.source import SCAN_CALLS

    admin = redis_server.client()
    for start in range(0, 100_000, 10_000):
        admin.mset({f"app:key:{i}": "x" for i in range(start, start + 10_000)})
    admin.xadd("events", {"event": "e"})  # Prefect's: found by name on the first poll
    admin.xadd("app:stream", {"x": "1"})  # another stream: found by the scan, in time
    exporter = await start_exporter(redis_url=f"messaging={redis_server.url()}",
                                    poll_interval_seconds="1", poll_timeout_seconds="1")
    s = await wait_for_value(exporter.port, "redis_up", {}, 1)
    assert s.value("redis_stream_length", stream="events") == 1
    assert s.value("redis_db_keys", db="db0") == 100_002
    # every poll: INFO, the TYPE probes (first poll), at most SCAN_CALLS scans, two XINFO per
    # stream: the same few commands whatever the keyspace holds
    bound = 1 + len(("events", "actions", "prefect:stream")) + SCAN_CALLS + 2 * 2
    assert s.value("redis_poll_commands") <= bound
    polls_before = s.value("prefect_pg_exporter_source_polls_total", source="redis")
    scans_before = scan_calls(redis_server)
    s = await wait_for(exporter.port, lambda s: s.value(
        "prefect_pg_exporter_source_polls_total", source="redis") >= polls_before + 3,
        "three more polls", timeout=60)
    polls = s.value("prefect_pg_exporter_source_polls_total", source="redis") - polls_before
    scans = scan_calls(redis_server) - scans_before
    # at most SCAN_CALLS a poll (one poll may be under way as the counters are read): a pass
    # over 100,000 keys (about 100 calls at COUNT 1000) is spread over polls, never done in one
    assert 0 < scans <= SCAN_CALLS * (polls + 1), (scans, polls)
    assert s.value("redis_poll_commands") <= bound
    s = await wait_for(exporter.port, lambda s: s.find("redis_stream_length",
                                                       stream="app:stream") == 1,
                       "the other stream found by the scan", timeout=90)


async def test_through_a_sentinel_as_prefect_redis_accepts_it(
        redis_server: LabRedis, start_exporter: StartExporter) -> None:
    sentinel = LabSentinel(redis_server.root / "sentinel", redis_server)
    sentinel.start()
    try:
        prefect_like_streams(redis_server)
        exporter = await start_exporter(
            redis_url=f"ha={sentinel.url(0)};wrong=redis+sentinel://x:lab-redis-monitor-secret@"
                      f"127.0.0.1:{sentinel.port}/no-such-service/0")
        s = await wait_for(exporter.port, lambda s: s.find(
            "redis_stream_length", target="ha", stream="events") == 15, "events via Sentinel")
        assert s.value("redis_stream_group_messages_pending", target="ha",
                       group="event-persister") == 5
        s = await wait_for_value(exporter.port, "redis_up", {"target": "wrong"}, 0)
        assert s.value("prefect_pg_exporter_source_errors_total", source="redis",
                       target="wrong", reason="connect") >= 1
        assert "lab-redis-monitor-secret" not in s.text
    finally:
        sentinel.stop()
