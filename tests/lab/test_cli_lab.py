"""The installed command end to end against the lab PostgreSQL: serves, and keeps secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from lab.common import free_port
from lab.postgres import MONITOR_PASSWORD, LabPostgres
from tests.helpers import parse

pytestmark = pytest.mark.lab


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter"], text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
             "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "1",  # the fastest it allows
             "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "1", **env})
    return proc, port


def _get(port: int, path: str, timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    return stderr


def test_command_serves_metrics_health_and_readiness(postgres: LabPostgres) -> None:
    proc, port = _start({"PREFECT_PG_EXPORTER_POSTGRES_DSN": postgres.monitor_dsn(),
                         "PREFECT_PG_EXPORTER_LOG_FORMAT": "json"})
    try:
        assert _get(port, "/healthz").text == "ok\n"
        deadline = time.monotonic() + 15
        while _get(port, "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        scrape = parse(_get(port, "/metrics").text)
        assert scrape.value("postgres_up") == 1
        assert scrape.value("process_resident_memory_bytes") > 0
        page = _get(port, "/").text
        assert "postgres" in page and ">up<" in page
        gz = httpx.get(f"http://127.0.0.1:{port}/metrics",
                       headers={"Accept-Encoding": "gzip"})
        assert gz.headers["Content-Encoding"] == "gzip" and "postgres_up" in gz.text
    finally:
        stderr = _stop(proc)
    assert MONITOR_PASSWORD not in stderr
    assert '"event": "exporter started"' in stderr


def test_wrong_password_reports_down_and_never_logs_the_password(postgres: LabPostgres) -> None:
    wrong = "not-the-Password-7f3a"
    dsn = f"postgresql://prefect_exporter:{wrong}@127.0.0.1:{postgres.port}/prefect"
    proc, port = _start({"PREFECT_PG_EXPORTER_POSTGRES_DSN": dsn})
    try:
        assert _get(port, "/readyz").status_code == 503
        time.sleep(1.5)  # several failed polls, each logged or counted
        body = _get(port, "/metrics").text
        scrape = parse(body)
        assert scrape.value("postgres_up") == 0
        assert scrape.value("prefect_pg_exporter_source_errors_total", reason="connect") >= 2
        page = _get(port, "/").text
        assert "password authentication failed" in page
    finally:
        stderr = _stop(proc)
    assert "password authentication failed" in stderr
    for text in (stderr, body, page):
        assert wrong not in text
