"""The Prefect source against a real Prefect 3.8.8 server whose database is behind PgBouncer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.prefect.runs import heartbeat_query
from exporter.prefect.snapshot import PrefectSnapshot
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect, start_prefect
from lab.prefect_api import PrefectAPI
from tests.helpers import PREFECT_POLL, StartExporter, scrape, wait_for, wait_for_value

pytestmark = pytest.mark.lab


@pytest.fixture
async def api(prefect: LabPrefect) -> AsyncIterator[PrefectAPI]:
    client = PrefectAPI(prefect.api_url)
    yield client
    await client.close()


async def test_backlog_late_upcoming_and_work_pool_state(
        prefect: LabPrefect, api: PrefectAPI, start_exporter: StartExporter) -> None:
    await api.work_pool("pool-a")
    deployment = await api.deployment("pool-a", "nightly")
    for minutes in (-10, -9, -8):  # overdue: the backlog, soon marked Late
        await api.scheduled_run(deployment, timedelta(minutes=minutes))
    for minutes in (20, 40):  # within the 1 h horizon
        await api.scheduled_run(deployment, timedelta(minutes=minutes))
    await api.scheduled_run(deployment, timedelta(hours=3))  # beyond it
    exporter = await start_exporter(prefect_api_url=f"lab={prefect.api_url}", **PREFECT_POLL)
    port = exporter.port
    pool = {"work_pool": "pool-a"}

    s = await wait_for_value(port, "prefect_late_runs", pool, 3, timeout=30)
    assert s.value("prefect_api_up", target="lab") == 1
    assert s.value("prefect_scheduled_backlog_runs", **pool) == 3
    assert s.value("prefect_upcoming_runs", **pool) == 2
    assert s.value("prefect_scheduled_backlog_max_delay_seconds", **pool) >= 600
    assert s.value("prefect_scheduled_runs") >= 3
    assert s.value("prefect_flow_runs", state_type="SCHEDULED") >= 6
    assert s.value("prefect_work_pool_runs_in_flight", **pool) == 0
    assert s.value("prefect_work_pool_status", status="NOT_READY", **pool) == 1
    assert s.value("prefect_work_pool_online_workers", **pool) == 0
    assert s.value("prefect_work_pool_info", type="process", **pool) == 1
    assert s.value("prefect_work_queue_paused", work_queue="default", **pool) == 0
    assert s.labelsets("prefect_server_info")[0]["version"] == "3.8.8"
    # the server's effective settings, as the lab set them
    setting = "server.database.sqlalchemy.connect_args.statement_cache_size"
    assert s.value("prefect_server_setting", name=setting) == 0
    assert s.value("prefect_server_setting",
                   name="server.services.late_runs.after_seconds") == prefect.late_after_seconds
    assert s.value("prefect_server_setting", name="server.database.sqlalchemy.pool_size") == 5

    await api.heartbeat("pool-a", "worker-1")
    s = await wait_for_value(port, "prefect_work_pool_online_workers", pool, 1)
    assert s.value("prefect_work_pool_status", status="READY", **pool) == 1
    assert s.value("prefect_work_pool_last_heartbeat_timestamp_seconds", **pool) > 0

    await api.pause_pool("pool-a")
    await api.set_pool_limit("pool-a", 7)
    s = await wait_for_value(port, "prefect_work_pool_concurrency_limit", pool, 7)
    assert s.value("prefect_work_pool_paused", **pool) == 1
    assert s.value("prefect_work_pool_status", status="PAUSED", **pool) == 1

    running = await api.scheduled_run(deployment, timedelta(minutes=50))
    await api.set_state(running, "PENDING")
    s = await wait_for_value(port, "prefect_work_pool_runs_in_flight", pool, 1)
    assert s.value("prefect_flow_runs", state_type="PENDING") >= 1
    assert s.value("prefect_upcoming_runs", **pool) == 2


async def test_requests_per_poll_do_not_grow_with_runs(
        prefect: LabPrefect, api: PrefectAPI, start_exporter: StartExporter) -> None:
    await api.work_pool("pool-b")
    deployment = await api.deployment("pool-b", "hourly")
    # heartbeats looked for over 2 days: whether an earlier test sent one cannot change
    # between the polls measured and the check below
    exporter = await start_exporter(prefect_api_url=prefect.api_url,
                                    heartbeat_timeout_seconds="86400", **PREFECT_POLL)
    state = exporter.poller.states[0]

    async def next_snapshot() -> PrefectSnapshot:
        current = state.snapshot
        await wait_for(exporter.port, lambda _: state.snapshot is not current and state.up,
                       "a new snapshot")
        assert isinstance(state.snapshot, PrefectSnapshot)
        return state.snapshot

    def unpolled_queues(snapshot: PrefectSnapshot) -> int:
        return sum(q.status == "NOT_READY" and bool(q.id) for q in snapshot.scheduling.queues)

    async def requests_in_one_poll() -> tuple[int, PrefectSnapshot]:
        """A poll's requests, less its one count per NOT_READY queue (queues turn NOT_READY
        a minute after their last poll, whatever the runs do). Two polls in a row: a poll
        that failed between them (a timeout on a busy machine) spent requests too."""
        while True:
            failed = sum(state.errors.values())
            first = await next_snapshot()
            second = await next_snapshot()
            if sum(state.errors.values()) == failed:
                return sum(r.count for r in second.requests.values()) - sum(
                    r.count for r in first.requests.values()) - unpolled_queues(second), second

    few, _ = await requests_in_one_poll()
    for minutes in range(1, 61):
        await api.scheduled_run(deployment, timedelta(minutes=-minutes))
    many, last = await requests_in_one_poll()
    assert few == many
    pools = len(last.scheduling.pools)
    unpolled = unpolled_queues(last)
    now = datetime.now(UTC)
    recent_heartbeats = await api.post("events/count-by/resource",
                                       heartbeat_query(now - timedelta(days=2), now))
    # /health and /ready (the probe); version, pools, 5 state counts, 5 totals, future runs,
    # queues, settings; runs
    # the late_runs service left unmarked, 2 deployment counts (the scheduler), the newest event
    # (found in the first window here), the last run start; the unfinished runs, the latest
    # heartbeats (and, where there are none, whether any was seen in a day), 4 ended counts, 2
    # concurrency limit lists + running task runs, 2 deployment counts (+ 1 per NOT_READY
    # queue, up to 20, not in `many`); per pool 6 + 1 unmarked + 4 ended
    assert unpolled <= 20
    assert many == 33 + (0 if recent_heartbeats else 1) + 11 * pools
    # CSRF protection is off on the lab server: asked once (422), never again
    assert (await next_snapshot()).requests["/csrf-token"].count == 1


async def test_auth_failures_and_a_stopped_server(
        lab_dir: Path, pgbouncer: LabPgBouncer, start_exporter: StartExporter,
        tmp_path_factory: pytest.TempPathFactory, postgres: LabPostgres) -> None:
    server = start_prefect(lab_dir / tmp_path_factory.mktemp("prefect").name, pgbouncer,
                           services=False,
                           extra_env={"PREFECT_SERVER_API_AUTH_STRING": "admin:right-pw"})
    try:
        wrong = await start_exporter(prefect_api_url=server.api_url,
                                     prefect_api_auth_string="admin:wrong-pw", **PREFECT_POLL)
        s = await wait_for(wrong.port, lambda s: s.value(
            "prefect_pg_exporter_source_errors_total", source="prefect", reason="connect") >= 2,
            "failed polls counted")
        assert s.value("prefect_api_up") == 0
        error = wrong.poller.states[0].last_error
        assert "401" in error and "PREFECT_API_AUTH_STRING" in error and "wrong-pw" not in error

        # a key too, which this server would refuse: the auth string is what is sent, as
        # Prefect's client does from 3.4.1
        right = await start_exporter(prefect_api_url=server.api_url,
                                     prefect_api_auth_string="admin:right-pw",
                                     prefect_api_key="pnu_not-for-this-server",
                                     postgres_dsn=postgres.monitor_dsn(), **PREFECT_POLL)
        await wait_for_value(right.port, "prefect_api_up", {}, 1, timeout=20)
        server.stop()
        s = await wait_for_value(right.port, "prefect_api_up", {}, 0)
        assert s.value("postgres_up") == 1  # the other sources carry on
        assert "connect" in right.poller.states[-1].errors or \
            "timeout" in right.poller.states[-1].errors
        server.start()
        await wait_for_value(right.port, "prefect_api_up", {}, 1, timeout=30)
        assert (await scrape(right.port)).value("prefect_server_info", version="3.8.8") == 1
    finally:
        server.stop()
