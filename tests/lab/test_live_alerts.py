"""Live proof: a real Prometheus scrapes the real exporter on the lab, with a copy of the shipped
rules whose `for:` and thresholds are shortened. The incidents are reproduced for real; the
matching alerts must fire, every dashboard panel query must return data while they are held,
and the alerts must resolve when the incidents end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import alerting, dashboards
from lab import incidents
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.prefect_api import PrefectAPI
from lab.prometheus import LabPrometheus
from lab.redis import LabRedis, prefect_like_streams
from tests.helpers import PREFECT_POLL, StartExporter, eventually

pytestmark = pytest.mark.lab

SHORT = {
    "idle_in_transaction_warning_seconds": 1, "idle_in_transaction_critical_seconds": 2,
    "blocked_wait_critical_seconds": 1, "client_read_stall_critical_seconds": 1,
    "pgbouncer_maxwait_critical_seconds": 1, "connections_warning_ratio": 0.25,
}
POOL = "pool-live"
EXPECTED = {  # alert -> labels that identify this test's incident
    "PostgresIdleInTransaction": {"application_name": "live-holder"},
    "PostgresIdleInTransactionStuck": {"application_name": "live-holder"},
    "PostgresSessionsBlocked": {},
    "PostgresClientReadStall": {},
    "PgBouncerClientsWaiting": {"database": "prefect", "user": "postgres"},
    "PgBouncerPoolExhausted": {"database": "prefect", "user": "postgres"},
    "PostgresConnectionsNearLimit": {},
    "PrefectDuplicatedBackgroundServices": {"target": "quiet",
                                            "channel": "prefect_automation_changes"},
    "PrefectLateRuns": {"work_pool": POOL},
}


@contextlib.asynccontextmanager
async def every_incident(pg: LabPostgres, bouncer: LabPgBouncer,
                         quiet: LabPostgres) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for incident in (
                incidents.index_build(pg, app="live-index"),  # ends last: it waits for them
                incidents.lock_chain(pg, table="scratch.live", app="live"),
                incidents.copy_stall(pg, table="scratch.live", app="live-copier"),
                incidents.listeners(quiet, apps=("live-services-a", "live-services-b")),
                incidents.idle_sessions(pg, 30, app="live-idle"),  # past 25% of max_connections
                incidents.pool_exhaustion(pg, bouncer, clients=bouncer.pool_size + 3,
                                          seconds=120)):
            await stack.enter_async_context(incident)
        yield


def _matches(alerts: list[dict[str, Any]], labels: dict[str, str]) -> bool:
    return any(all(a["labels"].get(k) == v for k, v in labels.items()) for a in alerts)


def _runnable(expr: str) -> str:
    return expr.replace("$target", ".*").replace("$__rate_interval", "1m")


async def test_alerts_fire_dashboards_have_data_and_alerts_resolve(
        postgres: LabPostgres, own_postgres: LabPostgres, pgbouncer: LabPgBouncer,
        prefect: LabPrefect, redis_server: LabRedis, start_exporter: StartExporter,
        tmp_path: Path) -> None:
    api = PrefectAPI(prefect.api_url)
    prefect_like_streams(redis_server)  # Prefect in HA's streams and groups, for the HA panels
    await api.work_pool(POOL)
    deployment = await api.deployment(POOL, "live")
    late = [await api.scheduled_run(deployment, timedelta(minutes=-m)) for m in (5, 6)]
    await api.heartbeat(POOL, "live-worker")
    await api.poll_queues(POOL)  # a queue polled, for its panel
    # a heartbeat seen, so the zombie panel has its (zero) count; the real worker's heartbeats
    # and zombies are proven in test_prefect_runs_lab.py
    await api.flow_run_heartbeat(late[0])
    await api.logs(late[0], ["a log line, for the retention backlog panels"])  # (#25)
    await api.global_concurrency_limit("live-limit", 2)  # for the concurrency panel
    postgres.psql("VACUUM (ANALYZE) public.flow_run")  # vacuum, analyze times for their panels
    # the opt-in column grants, for the retention backlog panels (#25)
    postgres.psql("GRANT SELECT (end_time) ON flow_run, task_run TO prefect_exporter;"
                  'GRANT SELECT ("timestamp") ON log TO prefect_exporter;'
                  "GRANT SELECT (updated) ON artifact, event_resources TO prefect_exporter;"
                  "GRANT SELECT (occurred) ON events TO prefect_exporter")

    # The lab's Prefect services LISTEN too, through PgBouncer, so that session's last query
    # shows on one server connection or another, now and then: the duplicated services are
    # reproduced on a PostgreSQL of their own ("quiet"), watched by the same exporter.
    exporter = await start_exporter(postgres_dsn=f"lab={postgres.monitor_dsn()};"
                                                 f"quiet={own_postgres.monitor_dsn()}",
                                    pgbouncer_dsn=pgbouncer.stats_dsn(),
                                    prefect_api_url=prefect.api_url,
                                    redis_url=f"messaging={redis_server.url(0)};"
                                              f"docket={redis_server.url(1)}", **PREFECT_POLL)
    rules = tmp_path / "rules.yml"
    rules.write_text(alerting.render_yaml(alerting.rule_groups(SHORT, for_scale=1 / 60)))
    rules_by_name = {r["alert"]: r["expr"] for g in yaml.safe_load(rules.read_text())["groups"]
                     for r in g["rules"] if "alert" in r}
    prom = LabPrometheus(tmp_path / "prometheus", exporter.port, rules)
    prom.start()
    try:
        async with every_incident(postgres, pgbouncer, own_postgres):
            async def all_firing() -> bool:
                firing = await prom.firing()
                return all(_matches(firing.get(name, []), labels)
                           for name, labels in EXPECTED.items())

            try:
                await eventually(all_firing, timeout=60, what="every incident's alert firing")
            except AssertionError:
                firing = await prom.firing()
                missing = [n for n, lab in EXPECTED.items()
                           if not _matches(firing.get(n, []), lab)]
                values = [f"{name}: {await prom.query(rules_by_name[name])}" for name in missing]
                raise AssertionError(f"not firing: {missing}; firing: {sorted(firing)}; "
                                     + "; ".join(values)) from None
            firing = await prom.firing()
            # the holder's alert: earlier tests may leave another session idle in transaction
            # in the session's lab, an alert of its own (whose application may fold to other)
            idle = next(a for a in firing["PostgresIdleInTransaction"]
                        if a["labels"].get("application_name") == "live-holder")
            assert "live-holder" in idle["annotations"]["description"]
            assert idle["annotations"]["runbook_url"].endswith("#postgresidleintransaction")

            empty = []
            for board, title, expr in dashboards.panel_queries():
                data = await prom.query(_runnable(expr))  # raises if it does not parse
                if not data["result"] and title not in dashboards.OPTIONAL_TITLES:
                    empty.append(f"{board}: {title}: {expr}")
            assert not empty, "panels without data:\n" + "\n".join(empty)

        for run in late:
            await api.set_state(run, "CANCELLED")

        async def resolved() -> bool:
            firing = await prom.firing()
            return not any(_matches(firing.get(name, []), labels)
                           for name, labels in EXPECTED.items())

        try:
            await eventually(resolved, timeout=60, what="the alerts to resolve")
        except AssertionError:
            firing = await prom.firing()
            still = [n for n, lab in EXPECTED.items() if _matches(firing.get(n, []), lab)]
            raise AssertionError(f"still firing: {still}") from None
    finally:
        prom.stop()
        await api.close()
