"""Each kind's driver is imported only when a target of that kind is configured: a sidecar that
watches one PostgreSQL does not carry psycopg, httpx, redis-py or bcrypt in its memory; nor the
modules only some settings need (#26: at most 50 MB at 2,000 backends, docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ("asyncpg", "psycopg", "httpx", "bcrypt", "pglast", "redis")
PG = {"postgres_dsn": "postgresql://x@127.0.0.1:1/db"}
# each imported where it is needed: the incident store with a state directory (sqlite3), a
# configuration file (tomllib), a DSN with an unknown keyword (difflib), bcrypt's threads with
# basic auth users (concurrent.futures.thread; asyncio's DNS lookups load it too, for a DSN
# whose host is a name, not an address as here)
ONLY_WHEN_NEEDED = ("sqlite3", "exporter.incidents.store", "tomllib", "difflib",
                    "concurrent.futures.thread")


def imported_by_an_exporter_on(settings: dict[str, str]) -> list[str]:
    # a fresh interpreter (lab/once.py) polls each target once and stops; a stop that hangs,
    # as it did when a cancel met a failing poll, times out here
    done = subprocess.run([sys.executable, "-m", "lab.once", json.dumps(settings)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1])["modules"]
    return modules


@pytest.mark.parametrize(("settings", "loaded"), [
    (PG, ["asyncpg"]),
    ({"pgbouncer_dsn": "postgresql://x@127.0.0.1:1/pgbouncer"}, ["psycopg"]),
    ({"prefect_api_url": "http://127.0.0.1:1/api"}, ["httpx"]),
    ({"redis_url": "redis://:pw@127.0.0.1:1/0"}, ["redis"]),
    ({**PG, "prefect_api_url": "http://127.0.0.1:1/api"}, ["asyncpg", "httpx"]),
])
def test_only_the_configured_kinds_drivers_are_imported(settings: dict[str, str],
                                                        loaded: list[str]) -> None:
    modules = imported_by_an_exporter_on(settings)
    assert sorted(d for d in DRIVERS if d in modules) == loaded


def test_a_postgresql_only_exporter_does_not_import_what_other_settings_need() -> None:
    modules = imported_by_an_exporter_on(PG)
    assert [m for m in ONLY_WHEN_NEEDED if m in modules] == []
