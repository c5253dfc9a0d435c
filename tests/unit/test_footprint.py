"""Each kind's driver is imported only when a target of that kind is configured: a sidecar that
watches one PostgreSQL does not carry psycopg, httpx, redis-py or bcrypt in its memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ("asyncpg", "psycopg", "httpx", "bcrypt", "pglast", "redis")


@pytest.mark.parametrize(("settings", "loaded"), [
    ({"postgres_dsn": "postgresql://x@127.0.0.1:1/db"}, ["asyncpg"]),
    ({"pgbouncer_dsn": "postgresql://x@127.0.0.1:1/pgbouncer"}, ["psycopg"]),
    ({"prefect_api_url": "http://127.0.0.1:1/api"}, ["httpx"]),
    ({"redis_url": "redis://:pw@127.0.0.1:1/0"}, ["redis"]),
    ({"postgres_dsn": "postgresql://x@127.0.0.1:1/db",
      "prefect_api_url": "http://127.0.0.1:1/api"}, ["asyncpg", "httpx"]),
])
def test_only_the_configured_kinds_drivers_are_imported(settings: dict[str, str],
                                                        loaded: list[str]) -> None:
    # a fresh interpreter (lab/once.py) polls each target once and stops; a stop that hangs,
    # as it did when a cancel met a failing poll, times out here
    done = subprocess.run([sys.executable, "-m", "lab.once", json.dumps(settings)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])["modules"]
    assert sorted(d for d in DRIVERS if d in modules) == loaded
