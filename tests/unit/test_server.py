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
