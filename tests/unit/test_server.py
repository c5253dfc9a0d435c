"""The HTTP server's own decisions: content negotiation (without a network), where the metrics
are served."""

from __future__ import annotations

import httpx
import pytest

from exporter.server import accepts_gzip
from tests.helpers import StartExporter


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("GZIP;q=0.5", True),
    ("deflate, gzip;q=1.0, *;q=0.5", True),
    ("*", True),
    ("", False),
    ("identity", False),
    ("gzip;q=0", False),  # refused explicitly
    ("gzip;q=0.0, identity", False),
    ("*;q=0", False),
    ("x-gzip", False),  # not a substring match
    ("br, *;q=0.1", True),
    ("gzip;q=0, *;q=1", False),  # named beats the wildcard
    ("gzip;q=abc", False),
])
def test_gzip_is_chosen_by_weight(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


async def test_metrics_on_the_telemetry_path(start_exporter: StartExporter) -> None:
    exporter = await start_exporter(telemetry_path="/prom/metrics",
                                    postgres_dsn="postgresql://x@127.0.0.1:1/db")
    base = f"http://127.0.0.1:{exporter.port}"
    async with httpx.AsyncClient() as client:
        metrics = await client.get(f"{base}/prom/metrics")
        assert metrics.status_code == 200 and "prefect_pg_exporter_build_info" in metrics.text
        assert (await client.get(f"{base}/metrics")).status_code == 404
        assert '<a href="/prom/metrics">' in (await client.get(f"{base}/")).text
        assert (await client.get(f"{base}/healthz")).status_code == 200


async def test_incidents_on_their_endpoint_on_the_page_and_in_the_log(
        start_exporter: StartExporter) -> None:
    from structlog.testing import capture_logs

    from tests.unit.test_incidents import HOLDER_SQL, chain, quiet

    exporter = await start_exporter(postgres_dsn="postgresql://x@127.0.0.1:1/db",
                                    recent_incidents="3")
    base = f"http://127.0.0.1:{exporter.port}"
    with capture_logs() as logs:
        exporter.incidents.after_poll([chain(100.0, app="t<b>")], now=100.0)
        exporter.incidents.after_poll([quiet(101.0)], now=101.0)
        exporter.incidents.after_poll([quiet(102.0)], now=200.0)  # past the window
    assert [e["event"] for e in logs] == ["incident begin", "incident end"]
    assert logs[0]["pid"] == 4711 and logs[0]["statement"] == HOLDER_SQL
    assert logs[0]["relation"] == "public.task_run" and logs[0]["log_level"] == "warning"
    assert logs[1]["duration_seconds"] == 1.0 and logs[1]["status"] == "ended"
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{base}/incidents")).json()
        page = (await client.get(f"{base}/")).text
    (incident,) = body["incidents"]
    assert incident["kind"] == "lock_chain" and incident["evidence"]["pid"] == 4711
    assert incident["ended_at"] == "1970-01-01T00:01:41Z" and body["statements"] is True
    assert "Recent incidents" in page and "t&lt;b&gt;" in page and "t<b>" not in page
    assert HOLDER_SQL in page and "public.task_run" in page


async def test_statements_endpoint_serves_the_fresh_snapshots(start_exporter: StartExporter
                                                              ) -> None:
    import time
    from dataclasses import replace

    from exporter.postgres.snapshot import StatementStats, TopStatements
    from tests.factories import healthy_pg

    exporter = await start_exporter(postgres_dsn="postgresql://x@127.0.0.1:1/db")
    base = f"http://127.0.0.1:{exporter.port}"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/statements")).json() == {"targets": []}
        [state] = exporter.poller.states
        now = time.time()
        state.snapshot = replace(healthy_pg(top_statements=TopStatements(now, "read", (
            StatementStats(11, 2, 1.0, 2, "SELECT $1"),))), taken_at=now, target=state.target)
        state.last_success = now
        body = (await client.get(f"{base}/statements")).json()
        assert '<a href="/statements">' in (await client.get(f"{base}/")).text
    [target] = body["targets"]
    assert target["statements"] == [{"queryid": "11", "fingerprint": "SELECT $1", "calls": 2,
                                     "total_seconds": 1.0, "mean_seconds": 0.5, "rows": 2}]
