"""Live proof of issue #14's growing database: a real Prefect 3.8.8 server with its services,
on a PostgreSQL of the test's own, takes a load of REST API writes (flow runs through their
states, their logs, and the events those transitions leave). The exporter's growth metrics
must move with it, and a real Prometheus with the shipped rules must see it: the recording rule
prefect_pg:postgres_table_net_growth_rows:rate1h above 0 where it was 0, and
PostgresDatabaseFilling firing against a size budget the database was far from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporter import alerting
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.prefect_api import PrefectAPI
from lab.prometheus import LabPrometheus
from tests.helpers import Scrape, StartExporter, eventually, scrape, wait_for

pytestmark = pytest.mark.lab

RUNS = 100
LOGS_PER_RUN = 20
STATES = ("RUNNING", "COMPLETED")  # after PENDING, which each run is created in
CONCURRENCY = 8
RULE = "prefect_pg:postgres_table_net_growth_rows:rate1h"
# The budget is this far above the database's size before the load: only growth projected over
# the warning window (7 days, from the last 6 h) can pass it, never the size itself.
BUDGET_MARGIN_BYTES = 2 * 1024**3
# every second: under the load, on a shared 2-core machine, a poll may take more than 0.25 s;
# the database's size every poll too (once a minute by default)
POLL = {"poll_interval_seconds": "1", "poll_timeout_seconds": "1",
        "database_size_interval_seconds": "1"}
# The alerts' `for:` a 120th of the shipped one: 30 min becomes 15 s, still 15 evaluations in a
# row (Prometheus evaluates every second here) of a condition that only the load made true.
FOR_SCALE = 1 / 120


@pytest.fixture
async def server(lab_dir: Path, own_postgres: LabPostgres,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LabPrefect]:
    """A server of the test's own: the load must not land in the session server's database."""
    prefect = LabPrefect(lab_dir / tmp_path_factory.mktemp("prefect-growth").name, own_postgres)
    prefect.start()
    yield prefect
    prefect.stop()


async def load(api: PrefectAPI) -> None:
    """RUNS flow runs, each through PENDING, RUNNING and COMPLETED with LOGS_PER_RUN log lines,
    CONCURRENCY at a time: what a busy worker's flows write."""
    flow = await api.flow("growth")
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            run = await api.create_flow_run(flow, f"growth-{i}")
            for state in STATES:
                await api.set_state(run, state)
            await api.logs(run, [f"line {n} of run {i}" for n in range(LOGS_PER_RUN)])

    await asyncio.gather(*(one(i) for i in range(RUNS)))


def table(s: Scrape, metric: str, name: str) -> float:
    return s.value(metric, table=name, schema="public")


async def rule_values(prom: LabPrometheus) -> dict[str, float]:
    data = await prom.query(RULE)
    return {r["metric"]["table"]: float(r["value"][1]) for r in data["result"]}


async def test_tables_grow_under_api_writes_and_prometheus_sees_it(
        server: LabPrefect, own_postgres: LabPostgres, start_exporter: StartExporter,
        tmp_path: Path) -> None:
    exporter = await start_exporter(postgres_dsn=own_postgres.monitor_dsn(), **POLL)
    before = await wait_for(exporter.port, lambda s: s.find("postgres_up") == 1,
                            "a first PostgreSQL poll")
    size_before = before.value("postgres_database_size_bytes", datname="prefect")
    budget = size_before + BUDGET_MARGIN_BYTES
    rules = tmp_path / "rules.yml"
    rules.write_text(alerting.render_yaml(alerting.rule_groups(
        {"database_size_limit_bytes": budget}, for_scale=FOR_SCALE)))
    prom = LabPrometheus(tmp_path / "prometheus", exporter.port, rules)
    prom.start()
    api = PrefectAPI(server.api_url)
    try:
        async def log_rule_at_zero() -> bool:
            return (await rule_values(prom)).get("log") == 0

        # nothing was logged yet: the log table's net growth is 0, not absent
        await eventually(log_rule_at_zero, 30, f"{RULE}{{table=log}} == 0 before the load")
        assert table(before, "postgres_table_inserted_rows_total", "log") == 0

        await load(api)

        last: list[Scrape] = []

        async def grown() -> bool:
            s = last[:] = [await scrape(exporter.port)]
            inserted = {t: table(s[0], "postgres_table_inserted_rows_total", t)
                        - table(before, "postgres_table_inserted_rows_total", t)
                        for t in ("flow_run", "flow_run_state", "log", "events")}
            # PostgreSQL's statistics arrive within seconds of each transaction
            return (inserted["flow_run"] >= RUNS and inserted["log"] >= RUNS * LOGS_PER_RUN
                    and inserted["flow_run_state"] >= RUNS * (1 + len(STATES))
                    # every state change is an event, stored by the event persister
                    and inserted["events"] >= RUNS * (1 + len(STATES)))

        await eventually(grown, 60, "the inserted rows counted")
        after = last[0]
        for name in ("flow_run", "flow_run_state", "log", "events", "event_resources"):
            assert table(after, "postgres_table_size_bytes", name) > \
                table(before, "postgres_table_size_bytes", name), name
        assert after.value("postgres_database_size_bytes", datname="prefect") > size_before
        assert table(after, "postgres_table_deleted_rows_total", "log") == 0

        async def rule_positive() -> bool:
            values = await rule_values(prom)
            return all(values.get(t, 0) > 0 for t in ("flow_run", "log", "events"))

        await eventually(rule_positive, 30, f"{RULE} > 0 for flow_run, log and events")

        async def filling() -> bool:
            firing = await prom.firing()
            return any(a["labels"].get("datname") == "prefect"
                       for a in firing.get("PostgresDatabaseFilling", []))

        # 30 min of `for:` scaled to 15 s; the size stays gigabytes under the budget
        await eventually(filling, 90, "PostgresDatabaseFilling for database prefect")
        size_now = (await scrape(exporter.port)).value("postgres_database_size_bytes",
                                                       datname="prefect")
        assert size_now < budget - BUDGET_MARGIN_BYTES / 2
    finally:
        prom.stop()
        await api.close()
