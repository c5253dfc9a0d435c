"""Fixtures: the lab's real servers (PostgreSQL, PgBouncer, Prefect), started once per session."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.common import lab_root
from lab.ha import LabPrefectHA
from lab.pgbouncer import LabPgBouncer, start_pgbouncer
from lab.postgres import LabPostgres, start_postgres
from lab.prefect import (
    DEFAULT_RELEASE,
    RELEASES,
    LabPrefect,
    PendingInstall,
    finish_installs,
    install_prefect_venvs,
    start_installs,
    start_prefect,
)
from lab.redis import LabRedis, start_redis


@pytest.fixture(scope="session")
def lab_dir() -> Iterator[Path]:
    root = lab_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(lab_dir: Path) -> Iterator[LabPostgres]:
    pg = start_postgres(lab_dir / "postgres")
    yield pg
    pg.stop()


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory, lab_dir: Path) -> Iterator[LabPostgres]:
    """A PostgreSQL of the test's own, for tests that stop or restart it."""
    pg = start_postgres(lab_dir / tmp_path_factory.mktemp("pg").name)
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def pgbouncer(lab_dir: Path, postgres: LabPostgres) -> Iterator[LabPgBouncer]:
    """PgBouncer in transaction pooling, default_pool_size 5, in front of the lab PostgreSQL."""
    bouncer = start_pgbouncer(lab_dir / "pgbouncer", postgres)
    yield bouncer
    bouncer.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory, lab_dir: Path) -> Iterator[LabRedis]:
    """A Redis 7 of the test's own (tests fill it, stop it, set maxmemory)."""
    server = start_redis(lab_dir / tmp_path_factory.mktemp("redis").name)
    yield server
    server.stop()


@pytest.fixture
def prefect_ha(tmp_path_factory: pytest.TempPathFactory, lab_dir: Path,
               own_postgres: LabPostgres, redis_server: LabRedis) -> Iterator[LabPrefectHA]:
    """Prefect 3.8.8 in HA: two API replicas (--no-services), one services process, Redis for
    messaging (db 0) and Docket (db 1), on a PostgreSQL of its own."""
    stack = LabPrefectHA(lab_dir / tmp_path_factory.mktemp("ha").name, own_postgres,
                         redis_server)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


LATE_AFTER_SECONDS = 5


@pytest.fixture(scope="session")
def prefect(lab_dir: Path, pgbouncer: LabPgBouncer) -> Iterator[LabPrefect]:
    """A real Prefect 3.8.8 server with its services, its database through the lab PgBouncer."""
    server = start_prefect(lab_dir / "prefect", pgbouncer, late_after_seconds=LATE_AFTER_SECONDS)
    yield server
    server.stop()


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
def prefect_versions(lab_dir: Path, postgres: LabPostgres) -> Iterator[dict[str, LabPrefect]]:
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
    try:
        for release in RELEASES:
            database = version_database(release.version)
            postgres.create_database(database)
            server = LabPrefect(lab_dir / f"prefect-{release.version}", postgres,
                                release=release, database=database, csrf=True,
                                late_after_seconds=VERSION_LATE_AFTER_SECONDS,
                                pool_size=VERSION_POOL_SIZE)
            server.launch()  # all at once: they migrate their databases concurrently
            servers[release.version] = server
        for server in servers.values():
            server.wait_ready(timeout=240)
        print(f"\nprefect versions: installs waited {installed - started:.0f}s, "
              f"{len(servers)} servers ready in {time.monotonic() - installed:.0f}s")
        yield servers
    finally:
        for server in servers.values():
            server.stop()
