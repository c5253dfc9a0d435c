"""The installed command end to end against the lab PostgreSQL: serves, and keeps secrets."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lab.postgres import MONITOR_PASSWORD, LabPostgres
from tests.exporter_process import ExporterProcess, exporter_process
from tests.helpers import Scrape, parse, until

pytestmark = pytest.mark.lab

FASTEST_POLL = {"PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "1",  # the fastest it allows
                "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "1"}


def _get(exporter: ExporterProcess, path: str) -> httpx.Response:
    return httpx.get(f"{exporter.url}{path}", timeout=2)


def _stopped_cleanly(exporter: ExporterProcess) -> str:
    """Stopped with SIGTERM, exit status 0: what it logged."""
    assert exporter.stop() == 0, exporter.log()
    return exporter.log()


def test_command_serves_metrics_health_and_readiness(postgres: LabPostgres,
                                                     tmp_path: Path) -> None:
    with exporter_process(tmp_path, {"PREFECT_PG_EXPORTER_POSTGRES_DSN": postgres.monitor_dsn(),
                                     **FASTEST_POLL}) as exporter:
        assert _get(exporter, "/healthz").text == "ok\n"
        until(lambda: _get(exporter, "/readyz").status_code == 200, 15, "/readyz 200")
        scrape = parse(_get(exporter, "/metrics").text)
        assert scrape.value("postgres_up") == 1
        assert scrape.value("process_resident_memory_bytes") > 0
        page = _get(exporter, "/").text
        assert "postgres" in page and ">up<" in page
        gz = httpx.get(f"{exporter.url}/metrics", headers={"Accept-Encoding": "gzip"})
        assert gz.headers["Content-Encoding"] == "gzip" and "postgres_up" in gz.text
        log = _stopped_cleanly(exporter)
    assert MONITOR_PASSWORD not in log
    assert '"event": "exporter started"' in log


def test_wrong_password_reports_down_and_never_logs_the_password(postgres: LabPostgres,
                                                                 tmp_path: Path) -> None:
    wrong = "not-the-Password-7f3a"
    dsn = f"postgresql://prefect_exporter:{wrong}@127.0.0.1:{postgres.port}/prefect"
    with exporter_process(tmp_path, {"PREFECT_PG_EXPORTER_POSTGRES_DSN": dsn,
                                     **FASTEST_POLL}) as exporter:
        assert _get(exporter, "/readyz").status_code == 503
        seen: list[Scrape] = []

        def failed_twice() -> bool:  # several failed polls, each logged or counted
            seen[:] = [parse(_get(exporter, "/metrics").text)]
            return seen[0].value("prefect_pg_exporter_source_errors_total",
                                 reason="connect") >= 2

        until(failed_twice, 15, "two failed connects counted")
        body = seen[0].text
        assert seen[0].value("postgres_up") == 0
        page = _get(exporter, "/").text
        assert "password authentication failed" in page
        log = _stopped_cleanly(exporter)
    assert "password authentication failed" in log
    for text in (log, body, page):
        assert wrong not in text
