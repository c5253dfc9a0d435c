"""A short soak in CI (benchmarks/soak.py runs it for longer): memory flat, no descriptor or
session leak, scrape latency unchanged, while faults are injected and 8 scrapers run."""

from __future__ import annotations

import os

import pytest

from benchmarks.soak import soak
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from tests.lab.fault_proxy import FaultProxy

pytestmark = pytest.mark.lab

SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))


async def test_soak_with_faults_and_concurrent_scrapers(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, prefect: LabPrefect) -> None:
    proxy = FaultProxy(prefect.api_url)
    await proxy.start()
    try:
        result = await soak(postgres, pgbouncer, proxy, SECONDS)
    finally:
        await proxy.stop()
    print(result.report())
    assert result.alive
    assert result.faults >= SECONDS // 5
    assert result.failed_scrapes == 0
    assert result.max_sessions <= 1
    assert result.rss_end_mb - result.rss_start_mb < 10, result.report()
    assert result.fds_end <= result.fds_start + 4, result.report()
    assert result.late_p99 < max(3 * result.early_p99, 0.02), result.report()
