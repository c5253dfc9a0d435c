"""Fixtures: the lab's real servers, and an in-process exporter pointed at them."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from exporter.app import Exporter
from exporter.config import load
from exporter.lab.common import lab_root
from exporter.lab.pgbouncer import LabPgBouncer, start_pgbouncer
from exporter.lab.postgres import LabPostgres, start_postgres
from exporter.lab.prefect import LabPrefect, start_prefect

FAST_POLL = {"poll_interval_seconds": "0.25", "poll_timeout_seconds": "0.25"}
# A Prefect poll is a few dozen HTTP requests, each a query through PgBouncer: give it room,
# also on a loaded 2-core CI machine.
PREFECT_POLL = {"poll_interval_seconds": "2", "poll_timeout_seconds": "2"}


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


StartExporter = Callable[..., Awaitable[Exporter]]


@pytest.fixture
async def start_exporter() -> AsyncIterator[StartExporter]:
    """Start an exporter on a free port with fast polling; flags as keyword arguments."""
    started: list[Exporter] = []

    async def start(**flags: str) -> Exporter:
        settings = {**FAST_POLL, "listen_address": "127.0.0.1:0", **flags}
        exporter = Exporter(load(settings, environ={}))
        await exporter.start()
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        await exporter.stop()
