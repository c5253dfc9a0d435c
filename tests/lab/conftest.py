"""Fixtures: the lab's real servers (PostgreSQL, PgBouncer, Prefect), started once per session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.ha import LabPrefectHA
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import (
    DEFAULT_RELEASE,
    RELEASES,
    LabPrefect,
    PendingInstall,
    finish_installs,
    install_prefect_venvs,
    start_installs,
)
from lab.redis import LabRedis
from lab.stack import Lab, running_lab


@pytest.fixture(scope="session")
def session_lab() -> Iterator[Lab]:
    """The lab of the session: its servers stopped, the last started first, and its root
    removed when the session ends."""
    with running_lab() as lab:
        yield lab


@pytest.fixture
def lab(session_lab: Lab) -> Iterator[Lab]:
    """The session's lab root; what a test starts through it stops when the test ends."""
    with session_lab.scope() as scope:
        yield scope


@pytest.fixture(scope="session")
def lab_dir(session_lab: Lab) -> Path:
    return session_lab.root


@pytest.fixture(scope="session")
def postgres(session_lab: Lab) -> LabPostgres:
    return session_lab.postgres()


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory, lab: Lab) -> LabPostgres:
    """A PostgreSQL of the test's own, for tests that stop or restart it."""
    return lab.postgres(tmp_path_factory.mktemp("pg").name)


@pytest.fixture(scope="session")
def pgbouncer(session_lab: Lab, postgres: LabPostgres) -> LabPgBouncer:
    """PgBouncer in transaction pooling, default_pool_size 5, in front of the lab PostgreSQL."""
    return session_lab.pgbouncer(postgres)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory, lab: Lab) -> LabRedis:
    """A Redis 7 of the test's own (tests fill it, stop it, set maxmemory)."""
    return lab.redis(tmp_path_factory.mktemp("redis").name)


@pytest.fixture
def prefect_ha(tmp_path_factory: pytest.TempPathFactory, lab: Lab,
               own_postgres: LabPostgres, redis_server: LabRedis) -> LabPrefectHA:
    """Prefect 3.8.8 in HA: two API replicas (--no-services), one services process, Redis for
    messaging (db 0) and Docket (db 1), on a PostgreSQL of its own."""
    return lab.prefect_ha(own_postgres, redis_server, tmp_path_factory.mktemp("ha").name)


LATE_AFTER_SECONDS = 5


@pytest.fixture(scope="session")
def prefect(session_lab: Lab, pgbouncer: LabPgBouncer) -> LabPrefect:
    """A real Prefect 3.8.8 server with its services, its database through the lab PgBouncer."""
    return session_lab.prefect(pgbouncer, late_after_seconds=LATE_AFTER_SECONDS)


# ---- the version matrix: one server per Prefect release -----------------------------------

VERSIONS_MODULE = "test_prefect_versions_lab.py"
_background_installs: list[PendingInstall] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """When the version matrix is to run, its virtualenvs start installing now, at the lowest
    CPU priority, behind the other lab tests: on a clean machine that hides most of the
    install (about 90 s) instead of adding it. The default release is left to the session's
    Prefect fixture, which needs it first and at full speed."""
    if any(VERSIONS_MODULE in item.nodeid for item in session.items):
        _background_installs.extend(start_installs(
            [r for r in RELEASES if r != DEFAULT_RELEASE], nice=19))


VERSION_LATE_AFTER_SECONDS = 5
VERSION_POOL_SIZE = 4  # set on every release; max_overflow is left at each release's default


def version_database(version: str) -> str:
    return "prefect_" + version.replace(".", "_")


@pytest.fixture(scope="module")
def prefect_versions(session_lab: Lab, postgres: LabPostgres) -> Iterator[dict[str, LabPrefect]]:
    """A real server of every release in RELEASES, by version, each with its services, CSRF
    protection on and a database of its own on the session PostgreSQL, connected directly:
    2.x and 3.1 cannot turn asyncpg's statement caches off (PgBouncer transaction pooling is
    out for them), and from 3.4.6 the services' LISTEN session, which the duplicated-services
    check counts, shows in pg_stat_activity only on a connection of its own (through
    transaction pooling other clients' statements replace it). PgBouncer in front of Prefect
    is the session 3.8.8 server's route."""
    started = time.monotonic()
    # the rest (the default release, when this module runs alone) alongside the background ones
    finish_installs([*_background_installs, *start_installs(RELEASES)])
    _background_installs.clear()
    install_prefect_venvs(RELEASES)  # and those another process was installing
    installed = time.monotonic()
    servers: dict[str, LabPrefect] = {}
    with session_lab.scope() as scope:
        for release in RELEASES:
            database = version_database(release.version)
            postgres.create_database(database)
            server = scope.prefect_server(
                postgres, f"prefect-{release.version}", release=release, database=database,
                csrf=True, late_after_seconds=VERSION_LATE_AFTER_SECONDS,
                pool_size=VERSION_POOL_SIZE)
            server.launch()  # all at once: they migrate their databases concurrently
            servers[release.version] = server
        for server in servers.values():
            server.wait_ready(timeout=240)
        print(f"\nprefect versions: installs waited {installed - started:.0f}s, "
              f"{len(servers)} servers ready in {time.monotonic() - installed:.0f}s")
        yield servers
