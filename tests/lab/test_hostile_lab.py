"""Hostile data from a real database: odd application names, bytes that are not UTF-8 in
another database's query text, many distinct names. The exposition stays valid (the real
parser and `promtool check metrics` accept it), bounded, and free of query text."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import psycopg
import pytest

from lab.postgres import LabPostgres
from tests.helpers import StartExporter, scrape, wait_for

pytestmark = pytest.mark.lab

ODD_NAMES = ['quo"te', "back\\slash", "new\nline", "{}=,", "x" * 200]
MARKER = "secret-query-marker-7d1f"


async def test_hostile_sessions_give_valid_bounded_exposition_without_query_text(
        own_postgres: LabPostgres, start_exporter: StartExporter) -> None:
    pg = own_postgres
    pg.psql("CREATE DATABASE legacy ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0", database="postgres")
    conns: list[psycopg.AsyncConnection[object]] = []
    try:
        legacy = await psycopg.AsyncConnection.connect(
            pg.dsn(database="legacy"), autocommit=True, client_encoding="SQL_ASCII")
        conns.append(legacy)
        await legacy.execute(b'LISTEN "caf\xe9\xff"')  # not UTF-8, shown raw to other DBs
        for name in ODD_NAMES + [f"generated-{i}" for i in range(40)]:
            conns.append(await psycopg.AsyncConnection.connect(
                pg.dsn(), autocommit=True, application_name=name))
        sleeper = await psycopg.AsyncConnection.connect(pg.dsn(), autocommit=True)
        conns.append(sleeper)
        sleeping = asyncio.create_task(sleeper.execute(f"SELECT pg_sleep(30) /* {MARKER} */"))

        exporter = await start_exporter(postgres_dsn=pg.monitor_dsn(), label_top_n="10")
        s = await wait_for(exporter.port, lambda s: sum(s.values("postgres_connections")) >= 46
                           and s.value("postgres_up") == 1, "every session counted")
        assert exporter.poller.states[0].errors["other"] == 0
        assert len(s.labelsets("postgres_connections")) <= 11 * 3  # top 10 + other, by state
        assert MARKER not in s.text
        channels = [lab["channel"] for lab in s.labelsets("postgres_listen_sessions")]
        assert len(channels) == 1 and channels[0].startswith("caf")
        promtool = shutil.which("promtool")
        if promtool:
            done = subprocess.run([promtool, "check", "metrics"], input=s.text.encode(),
                                  capture_output=True)
            assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        sleeping.cancel()
        assert (await scrape(exporter.port)).value("postgres_up") == 1
    finally:
        for conn in conns:
            await conn.close()
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE query LIKE '%{MARKER}%' AND pid <> pg_backend_pid()")
