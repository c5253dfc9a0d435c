"""Live proof: a real Prometheus scrapes the real exporter on the lab, with a copy of the shipped
rules whose `for:` and thresholds are shortened. The incidents are reproduced for real; the
matching alerts must fire, every dashboard panel query must return data while they are held,
and the alerts must resolve when the incidents end."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from exporter import alerting, dashboards
from exporter.lab.pgbouncer import LabPgBouncer
from exporter.lab.postgres import LabPostgres
from exporter.lab.prefect import LabPrefect
from exporter.lab.prefect_api import PrefectAPI
from exporter.lab.prometheus import LabPrometheus
from tests.conftest import PREFECT_POLL, StartExporter
from tests.helpers import eventually, wait_for

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
    "PrefectDuplicatedBackgroundServices": {"channel": "prefect_automation_changes"},
    "PrefectLateRuns": {"work_pool": POOL},
}


def _ignore(task: asyncio.Task[object]) -> None:
    task.cancelled() or task.exception()


@contextlib.asynccontextmanager
async def incidents(pg: LabPostgres, bouncer: LabPgBouncer) -> AsyncIterator[None]:
    conns: list[asyncpg.Connection] = []

    async def connect(dsn: str, app: str, **kw: object) -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, server_settings={"application_name": app}, **kw)
        conns.append(conn)
        return conn

    pg.psql("CREATE TABLE IF NOT EXISTS scratch.live (id int PRIMARY KEY)")
    pg.psql("INSERT INTO scratch.live VALUES (1) ON CONFLICT DO NOTHING")
    never = asyncio.Event()

    async def no_data() -> AsyncIterator[bytes]:
        await never.wait()
        yield b""

    try:
        holder = await connect(pg.dsn(), "live-holder")
        await holder.execute("BEGIN; UPDATE scratch.live SET id = 1 WHERE id = 1")
        writer = await connect(pg.dsn(), "live-writer")
        asyncio.create_task(writer.execute("UPDATE scratch.live SET id = 1")).add_done_callback(
            _ignore)
        copier = await connect(pg.dsn(), "live-copier")
        asyncio.create_task(copier.copy_to_table("live", schema_name="scratch", source=no_data())
                            ).add_done_callback(_ignore)
        for app in ("live-services-a", "live-services-b"):
            await (await connect(pg.dsn(), app)).add_listener("prefect_automation_changes",
                                                              lambda *_: None)
        for i in range(30):  # connections: past 25% of max_connections
            await connect(pg.dsn(), f"live-idle-{i}")
        for _ in range(bouncer.pool_size + 3):  # PgBouncer: more clients than server slots
            conn = await connect(bouncer.dsn(), "live-pooled", statement_cache_size=0)
            asyncio.create_task(conn.execute("SELECT pg_sleep(120)")).add_done_callback(_ignore)
        yield
    finally:
        for conn in conns:
            conn.terminate()
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name "
                "LIKE 'live-%' OR query = 'SELECT pg_sleep(120)'")


def _matches(alerts: list[dict[str, object]], labels: dict[str, str]) -> bool:
    return any(all(a["labels"].get(k) == v for k, v in labels.items())  # type: ignore[union-attr]
               for a in alerts)


def _runnable(expr: str) -> str:
    return expr.replace("$target", ".*").replace("$__rate_interval", "1m")


async def test_alerts_fire_dashboards_have_data_and_alerts_resolve(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, prefect: LabPrefect,
        start_exporter: StartExporter, tmp_path: Path) -> None:
    api = PrefectAPI(prefect.api_url)
    await api.work_pool(POOL)
    deployment = await api.deployment(POOL, "live")
    late = [await api.scheduled_run(deployment, timedelta(minutes=-m)) for m in (5, 6)]
    await api.heartbeat(POOL, "live-worker")
    postgres.psql("VACUUM public.flow_run")  # a vacuum time for the hot-table panel

    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn(),
                                    pgbouncer_dsn=pgbouncer.stats_dsn(),
                                    prefect_api_url=prefect.api_url, **PREFECT_POLL)
    # The lab's Prefect services LISTEN too (through PgBouncer, so that session's last query
    # can show on one server connection or another): the duplicate threshold is set above what
    # is there before the incident, so the two sessions of the incident are what fires it.
    before = await wait_for(exporter.port, lambda s: s.value("postgres_up") == 1, "postgres up")
    listening = sum(before.values("postgres_listen_sessions",
                                  channel="prefect_automation_changes"))
    rules = tmp_path / "rules.yml"
    rules.write_text(alerting.render_yaml(alerting.rule_groups(
        {**SHORT, "listen_sessions_warning": listening + 1}, for_scale=1 / 60)))
    prom = LabPrometheus(tmp_path / "prometheus", exporter.port, rules)
    prom.start()
    try:
        async with incidents(postgres, pgbouncer):
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
                raise AssertionError(f"not firing: {missing}; firing: {sorted(firing)}") \
                    from None
            firing = await prom.firing()
            idle = firing["PostgresIdleInTransaction"][0]
            assert "live-holder" in idle["annotations"]["description"]
            assert idle["annotations"]["runbook_url"].endswith("#postgresidleintransaction")

            empty = []
            for board, title, expr in dashboards.panel_queries():
                data = await prom.query(_runnable(expr))  # raises if it does not parse
                if not data["result"]:
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


def test_dashboards_and_rules_use_only_exported_metrics() -> None:
    from exporter.catalogue import CATALOGUE

    known = set(CATALOGUE) | {name for name, _ in alerting.RECORDING_RULES}
    for board, title, expr in dashboards.panel_queries():
        unquoted = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
        names = set(re.findall(r"\b((?:postgres|pgbouncer|prefect)[a-z0-9_:]*)\b", unquoted))
        unknown = names - known
        assert not unknown, f"{board}/{title} uses {unknown}"


def test_committed_dashboards_are_generated() -> None:
    root = Path(__file__).resolve().parent.parent / "dashboards"
    for name, text in dashboards.render_all().items():
        assert (root / name).read_text() == text, \
            f"regenerate: python -m exporter.dashboards dashboards ({name})"
