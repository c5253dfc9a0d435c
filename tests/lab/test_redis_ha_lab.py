"""Prefect in HA, live: two API replicas, one services process, Redis for messaging and
Docket (Prefect 3.8.8, prefect-redis 0.3.0). The services process dies while both replicas
serve: the pods look healthy, the exporter and the doctor say what stopped; it comes back and
the backlog drains; a replica dies and is named."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from lab.ha import LabPrefectHA
from lab.prefect_api import PrefectAPI
from tests.helpers import StartExporter, wait_for, wait_for_value

pytestmark = pytest.mark.lab

IDLE = "10"  # seconds: a consumer idle longer is not active (the default is 60)
POLL = {"poll_interval_seconds": "3", "poll_timeout_seconds": "3"}
DOCKET = {"target": "docket", "stream": "prefect:stream", "group": "docket-workers"}
PERSISTER = {"target": "messaging", "stream": "events", "group": "event-persister"}


def doctor(ha: LabPrefectHA, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", "--format", "json"], capture_output=True,
        text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "10",
             "PREFECT_PG_EXPORTER_PREFECT_API_URL": ha.named_api_urls(),
             "PREFECT_PG_EXPORTER_REDIS_URL": ha.exporter_redis_urls(),
             "PREFECT_PG_EXPORTER_REDIS_CONSUMER_IDLE_SECONDS": IDLE, **env})
    assert done.stdout, done.stderr
    findings = {f"{f['check']} {f['target']}": f for f in json.loads(done.stdout)["findings"]}
    return done.returncode, findings


async def keep_publishing(ha: LabPrefectHA) -> None:
    """A flow run every second through the first replica: events keep coming, and the
    services' groups keep reading them (their consumers stay active)."""
    api = PrefectAPI(ha.replicas[0].api_url)
    try:
        flow = await api.flow("ha-flow")
        for n in range(1000):
            await api.create_flow_run(flow, f"ha-steady-{n}")
            await asyncio.sleep(1)
    finally:
        await api.close()


def events_added(ha: LabPrefectHA) -> int:
    return int(ha.redis.client(0).xinfo_stream("events")["entries-added"])


async def test_services_killed_replicas_serving_then_back_then_a_replica_killed(
        prefect_ha: LabPrefectHA, start_exporter: StartExporter) -> None:
    ha = prefect_ha
    exporter = await start_exporter(prefect_api_url=ha.named_api_urls(),
                                    redis_url=ha.exporter_redis_urls(),
                                    redis_consumer_idle_seconds=IDLE, **POLL)
    port = exporter.port
    await wait_for_value(port, "redis_stream_group_consumers_active", DOCKET, 1, timeout=120)
    s = await wait_for(port, lambda s: s.find("redis_stream_group_undelivered_messages",
                                              **PERSISTER) == 0, "the persister caught up",
                       timeout=120)
    assert s.value("prefect_api_up", target="api-0") == 1
    assert s.value("prefect_api_up", target="api-1") == 1
    # Prefect's own metrics (PREFECT_SERVER_METRICS_ENABLED), for Prometheus to scrape beside
    for replica in ha.replicas:
        own = httpx.get(f"{replica.api_url}/metrics", timeout=10)
        assert own.status_code == 200 and "process_resident_memory_bytes" in own.text

    # the services process dies; both replicas keep serving, and runs are created through each
    ha.services.kill()
    before = events_added(ha)
    apis = [PrefectAPI(r.api_url) for r in ha.replicas]
    try:
        for i, api in enumerate(apis):
            flow = await api.flow("ha-flow")
            for n in range(3):
                await api.create_flow_run(flow, f"ha-run-{i}-{n}")
    finally:
        for api in apis:
            await api.close()
    await asyncio.sleep(0)
    published = events_added(ha) - before
    assert published >= 6, "each run's creation publishes its state's event"
    # the persister's backlog is exactly what was published since it died
    s = await wait_for_value(port, "redis_stream_group_undelivered_messages", PERSISTER,
                             published, timeout=60)
    s = await wait_for_value(port, "redis_stream_group_consumers_active", DOCKET, 0, timeout=60)
    listed = s.value("redis_stream_group_consumers", **DOCKET)
    assert listed >= 1  # the dead worker, listed
    assert s.value("prefect_api_up", target="api-0") == 1
    assert s.value("prefect_api_up", target="api-1") == 1

    code, findings = await asyncio.to_thread(doctor, ha)
    assert code == 2, findings
    down = findings["prefect_services_down docket"]
    assert down["severity"] == "critical"
    assert "meanwhile the Prefect API answers: api-0, api-1" in down["evidence"]
    stalled = findings["prefect_events_not_persisted messaging"]
    assert stalled["severity"] == "critical" and f"{published} event(s)" in str(stalled["title"])

    # the services come back: a live Docket worker, and the backlog drains to 0
    ha.services.start()
    s = await wait_for_value(port, "redis_stream_group_consumers_active", DOCKET, 1,
                             timeout=120)
    # Docket never removes the dead worker's consumer: the new one is listed beside it, and
    # (the threshold lowered to the active limit) the doctor says so, as information
    assert s.value("redis_stream_group_consumers", **DOCKET) == listed + 1
    code, findings = await asyncio.to_thread(
        doctor, ha, PREFECT_PG_EXPORTER_THRESHOLDS=f"redis_dead_consumer_seconds={IDLE}")
    dead = findings["redis_stream_group_dead_consumers docket"]
    assert dead["severity"] == "info"
    assert dead["title"].startswith(f"Group docket-workers on prefect:stream lists {listed:g} "
                                    "dead consumer(s): idle for over 10s while 1 other(s) read")
    await wait_for_value(port, "redis_stream_group_undelivered_messages", PERSISTER, 0,
                         timeout=120)

    # a consumer group nobody reads any more (a replica's subscription that went away) while
    # the services read on: named, the services' own groups not
    messaging = ha.redis.client(0)
    messaging.xgroup_create("events", "ephemeral-gone", id="$")
    messaging.xreadgroup("ephemeral-gone", "gone-host-1", {"events": ">"}, count=1)
    publishing = asyncio.create_task(keep_publishing(ha))
    try:
        s = await wait_for(port, lambda s: s.find(
            "prefect_pg_exporter_finding", check="redis_stream_group_abandoned",
            severity="warning") == 1, "the abandoned group found", timeout=90)
    finally:
        publishing.cancel()
    assert s.value("redis_stream_group_consumers_active", **{**PERSISTER,
                                                             "group": "ephemeral-gone"}) == 0
    assert s.value("redis_stream_group_undelivered_messages",
                   **{**PERSISTER, "group": "ephemeral-gone"}) > 0
    messaging.xgroup_destroy("events", "ephemeral-gone")

    # a replica dies: the exporter and the doctor name it, the other keeps answering
    ha.replicas[1].stop()
    # api-0 answering while api-1 is down, in one scrape: on a loaded machine one of api-0's
    # polls may time out meanwhile (it did in a CI run beside a benchmark), and be up the next
    s = await wait_for(port, lambda s: s.value("prefect_api_up", target="api-1") == 0
                       and s.value("prefect_api_up", target="api-0") == 1,
                       "api-1 down and api-0 up", timeout=60)
    code, findings = await asyncio.to_thread(doctor, ha)
    assert findings["source_down api-1"]["title"] == "cannot read prefect api-1"
    assert "source_down api-0" not in findings
    assert "prefect_services_down docket" not in findings
