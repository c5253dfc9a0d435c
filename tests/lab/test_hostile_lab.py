"""Hostile data from a real database: odd application names, bytes that are not UTF-8 in
another database's query text, many distinct names. The exposition stays valid (the real
parser and `promtool check metrics` accept it), bounded, and free of query text. And hostile
clients: idle and slow sockets against an exporter with few file descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from lab.postgres import LabPostgres
from tests.exporter_process import exporter_process
from tests.helpers import StartExporter, parse, scrape, until, wait_for

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


def _poll_state(url: str) -> tuple[float, float, float]:
    """postgres_up, its last success and its error count, from a real scrape."""
    s = parse(httpx.get(f"{url}/metrics", timeout=10).text)
    last = s.value("prefect_pg_exporter_source_last_success_timestamp_seconds",
                   source="postgres")
    errors = sum(s.values("prefect_pg_exporter_source_errors_total", source="postgres"))
    return s.value("postgres_up"), last, errors


def test_idle_and_slow_sockets_under_a_low_descriptor_limit(postgres: LabPostgres,
                                                            tmp_path: Path) -> None:
    """The exporter limited to 64 file descriptors (`ulimit -n 64`), 70 sockets that never send
    a request and 10 that send their headers a byte at a time: /healthz answers, polls of the
    real PostgreSQL keep succeeding with no error, the sockets are closed by the server within
    seconds, and the log holds no traceback. Before: /healthz timed out, the poller failed with
    EMFILE and asyncio logged thousands of tracebacks a second."""
    env = {"PREFECT_PG_EXPORTER_POSTGRES_DSN": postgres.monitor_dsn(),
           "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "1",
           "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "1"}
    with exporter_process(tmp_path, env, nofile=64) as exporter:
        until(lambda: _poll_state(exporter.url)[0] == 1, 30, "PostgreSQL polled", interval=0.2)
        _, first_success, first_errors = _poll_state(exporter.url)
        address = ("127.0.0.1", exporter.port)
        idle = [socket.create_connection(address) for _ in range(70)]
        slow = [socket.create_connection(address) for _ in range(10)]
        try:
            for sock in slow:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()
            assert httpx.get(f"{exporter.url}/healthz", timeout=10).status_code == 200
            assert time.monotonic() - started < 3.0
            for sock in slow:  # still dripping: closed anyway once HEADER_TIMEOUT is past
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            state: list[tuple[float, float, float]] = []

            def two_more_polls() -> bool:  # at least, each a success
                state[:] = [_poll_state(exporter.url)]
                return state[0][1] >= first_success + 2

            until(two_more_polls, 30, "two successful polls under the flood", interval=0.3)
            up, _, errors = state[0]
            assert up == 1 and errors == first_errors
            closed = sum(_closed(sock, 15) for sock in idle + slow)
            assert closed == len(idle) + len(slow)
        finally:
            for sock in idle + slow:
                sock.close()
        exporter.stop()
    log = exporter.log()
    assert "Traceback" not in log and "Too many open files" not in log.replace(
        '"kind": "Too many open files"', ""), log[:3000]


def _closed(sock: socket.socket, seconds: float) -> bool:
    """Whether the server has closed the socket (within `seconds`)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
