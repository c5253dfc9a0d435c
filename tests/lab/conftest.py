"""Fixtures: the lab's real servers (PostgreSQL, PgBouncer, Prefect), started once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.common import lab_root
from lab.pgbouncer import LabPgBouncer, start_pgbouncer
from lab.postgres import LabPostgres, start_postgres
from lab.prefect import LabPrefect, start_prefect


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


LATE_AFTER_SECONDS = 5


@pytest.fixture(scope="session")
def prefect(lab_dir: Path, pgbouncer: LabPgBouncer) -> Iterator[LabPrefect]:
    """A real Prefect 3.8.8 server with its services, its database through the lab PgBouncer."""
    server = start_prefect(lab_dir / "prefect", pgbouncer, late_after_seconds=LATE_AFTER_SECONDS)
    yield server
    server.stop()
