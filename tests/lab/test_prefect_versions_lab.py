"""Every Prefect release people run (lab.prefect.RELEASES: 2.20, 3.1, 3.4, 3.8, 3.9), each a
real server with its services and CSRF protection on, in a database of its own: the exporter's
exact counts, the settings it reads, and each capability of exporter/prefect/compat.py
observed on the server exactly from the release the table gives (docs/compatibility.md is
rendered from that table). Then one exporter polling two releases at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from exporter.app import Exporter
from exporter.prefect import compat
from exporter.prefect.snapshot import PrefectSnapshot
from lab.postgres import LabPostgres
from lab.prefect import APPLICATION_NAME, RELEASES, LabPrefect
from lab.prefect_api import PrefectAPI
from tests.helpers import (
    PREFECT_POLL,
    StartExporter,
    eventually,
    scrape,
    wait_for,
    wait_for_value,
)
from tests.lab.conftest import VERSION_LATE_AFTER_SECONDS, VERSION_POOL_SIZE, version_database

# the first test waits for the virtualenvs (on a clean machine) and the servers' start
pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]
VERSIONS = [r.version for r in RELEASES]
SETTING = "prefect_server_setting"
DB = "server.database.sqlalchemy."


@pytest.fixture
async def api(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, PrefectAPI]]:
    servers: dict[str, LabPrefect] = request.getfixturevalue("prefect_versions")
    clients = {v: PrefectAPI(s.api_url, csrf=True) for v, s in servers.items()}
    yield clients
    for client in clients.values():
        await client.close()


async def scheduled(api: PrefectAPI, pool: str, minutes: list[float]) -> str:
    """A work pool with a deployment and a SCHEDULED run at each offset; the deployment id."""
    await api.work_pool(pool)
    deployment = await api.deployment(pool, f"{pool}-deployment")
    for offset in minutes:
        await api.scheduled_run(deployment, timedelta(minutes=offset))
    return deployment


def snapshot_of(exporter: Exporter, target: str) -> PrefectSnapshot:
    (state,) = [s for s in exporter.poller.states if s.target == target]
    assert isinstance(state.snapshot, PrefectSnapshot)
    return state.snapshot


def listen_sessions(postgres: LabPostgres, database: str) -> int:
    """Sessions of that database whose last statement is LISTEN "prefect_automation_changes",
    as the exporter's PostgreSQL source reads them."""
    return int(postgres.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
        f"'{database}' AND query ~* '^\\s*listen\\s+\"?prefect_automation_changes'"))


@pytest.mark.parametrize("version", VERSIONS)
async def test_counts_settings_and_capabilities(
        version: str, prefect_versions: dict[str, LabPrefect], api: dict[str, PrefectAPI],
        postgres: LabPostgres, start_exporter: StartExporter) -> None:
    server = prefect_versions[version]
    has = {c.key: compat.has(version, c.key) for c in compat.CAPABILITIES}

    # CSRF protection is on: a POST without a token, as the exporter sent them before, fails
    raw = httpx.post(f"{server.api_url}/flow_runs/count", json={}, timeout=10)
    assert (raw.status_code, raw.json()) == (403, {"detail": "Missing CSRF token."})
    assert has["csrf"]

    await scheduled(api[version], "pool-a", [-10, -9, -8, 20, 40, 180])
    pending = await scheduled(api[version], "pool-b", [-7, 30])
    run = await api[version].scheduled_run(pending, timedelta(minutes=50))
    await api[version].set_state(run, "PENDING")

    target = f"prefect-{version}"
    exporter = await start_exporter(prefect_api_url=f"{target}={server.api_url}",
                                    **PREFECT_POLL)
    a, b = {"target": target, "work_pool": "pool-a"}, {"target": target, "work_pool": "pool-b"}
    # the services mark the overdue runs Late within seconds
    s = await wait_for(exporter.port, lambda s: s.find("prefect_late_runs", **a) == 3
                       and s.find("prefect_late_runs", **b) == 1, "the overdue runs Late",
                       timeout=60)
    assert s.value("prefect_api_up", target=target) == 1
    assert s.value("prefect_server_info", target=target, version=version) == 1
    assert has["scheduling_counts"]
    assert (s.value("prefect_scheduled_backlog_runs", **a),
            s.value("prefect_upcoming_runs", **a)) == (3, 2)  # the 3 h one is beyond the hour
    assert (s.value("prefect_scheduled_backlog_runs", **b),
            s.value("prefect_upcoming_runs", **b),
            s.value("prefect_work_pool_runs_in_flight", **b)) == (1, 1, 1)
    assert s.value("prefect_scheduled_backlog_max_delay_seconds", **a) >= 600
    assert s.value("prefect_flow_runs", target=target, state_type="SCHEDULED") == 8
    assert s.value("prefect_flow_runs", target=target, state_type="PENDING") == 1
    assert s.value("prefect_scheduled_runs", target=target) == 4

    # settings, whatever the shape of the answer (2.x durations are seconds, 3.x ISO 8601)
    assert has["settings"]
    assert s.value(SETTING, target=target, name=DB + "pool_size") == VERSION_POOL_SIZE
    assert s.value(SETTING, target=target,
                   name="server.services.late_runs.after_seconds") == VERSION_LATE_AFTER_SECONDS
    assert s.value(SETTING, target=target, name="server.services.scheduler.max_scheduled_time") \
        == 100 * 86400
    # max_overflow left at the release's default: 10, or null before 3.1.13
    assert s.find(SETTING, target=target, name=DB + "max_overflow") == (
        10 if has["pool_sizes"] else None)
    # the statement caches, set to 0 on every release, exist from 3.2.7
    for cache in ("statement_cache_size", "prepared_statement_cache_size"):
        assert s.find(SETTING, target=target, name=f"{DB}connect_args.{cache}") == (
            0 if has["statement_caches"] else None)
    # the application name, set on every release, is read and applied from 3.1.13
    snap = snapshot_of(exporter, target)
    database = version_database(version)
    named = int(postgres.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                              f"'{database}' AND application_name = '{APPLICATION_NAME}'"))
    if has["application_name"]:
        assert snap.text_settings[DB + "connect_args.application_name"] == APPLICATION_NAME
        assert named > 0
    else:
        assert snap.text_settings == {} and named == 0

    # one CSRF token for every POST of every poll so far, none refused; a release that cannot
    # count ended runs is asked once, on the first poll
    assert snap.requests["/csrf-token"].count == 1
    assert snap.requests["/flow_runs/count"].errors == (0 if has["outcomes"] else 1)
    assert (s.find("prefect_flow_runs_ended", target=target, work_pool="pool-a",
                   state_type="COMPLETED") is not None) == has["outcomes"]

    # the services' LISTEN: one session from 3.4.6, none before (the services are running:
    # they marked the runs Late)
    if has["listen_services"]:
        async def listening() -> bool:
            return listen_sessions(postgres, database) == 1

        await eventually(listening, 30, "the services' LISTEN session")
    else:
        assert listen_sessions(postgres, database) == 0

    # the doctor says what this release hides, and only that
    blind = {f.title for f in exporter.findings if f.check == compat.BLIND_SPOT.id}
    expected = set()
    if not has["statement_caches"]:
        expected.add(f"Prefect {version}: cannot read whether asyncpg's statement caches are off")
    if not has["pool_sizes"]:
        expected.add(f"Prefect {version} reports max_overflow as null")
    if not has["listen_services"]:
        expected.add(f"Prefect {version}: duplicated background services cannot be detected")
    if not has["outcomes"]:
        expected.add(f"Prefect {version}: runs that failed or crashed cannot be counted")
    assert blind == expected


async def test_one_exporter_two_releases_each_its_target(
        prefect_versions: dict[str, LabPrefect], api: dict[str, PrefectAPI],
        start_exporter: StartExporter) -> None:
    old, new = VERSIONS[0], VERSIONS[-1]  # 2.20 and the latest 3.x: both settings shapes
    await scheduled(api[old], "pool-both", [-6])
    await scheduled(api[new], "pool-both", [-6, -5, 25])
    urls = f"old={prefect_versions[old].api_url};new={prefect_versions[new].api_url}"
    exporter = await start_exporter(prefect_api_url=urls, **PREFECT_POLL)
    await wait_for_value(exporter.port, "prefect_late_runs",
                         {"target": "new", "work_pool": "pool-both"}, 2, timeout=60)
    s = await wait_for_value(exporter.port, "prefect_late_runs",
                             {"target": "old", "work_pool": "pool-both"}, 1, timeout=60)
    assert s.value("prefect_server_info", target="old", version=old) == 1
    assert s.value("prefect_server_info", target="new", version=new) == 1
    assert s.value("prefect_scheduled_backlog_runs", target="old", work_pool="pool-both") == 1
    assert s.value("prefect_upcoming_runs", target="new", work_pool="pool-both") == 1
    assert s.value("prefect_upcoming_runs", target="old", work_pool="pool-both") == 0
    for name in ("old", "new"):
        assert s.value("prefect_api_up", target=name) == 1
        assert s.value(SETTING, target=name, name=DB + "pool_size") == VERSION_POOL_SIZE
    # every Prefect series carries one of the two targets
    targets = {lab["target"] for name in s.names() if name.startswith("prefect_")
               and not name.startswith("prefect_pg_exporter")
               for lab in s.labelsets(name)}
    assert targets == {"old", "new"}
    assert (await scrape(exporter.port)).value("prefect_pg_exporter_source_up", source="prefect",
                                               target="new") == 1
