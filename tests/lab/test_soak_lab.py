"""Short soaks in CI (benchmarks/soak.py and benchmarks/memory.py run them for longer): no
descriptor or session leak and scrape latency unchanged while faults are injected and 8
scrapers run; memory flat under fast steady polling."""

from __future__ import annotations

import os

import pytest

from benchmarks.memory import Process, exporter_env, measure
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


DEFAULT_POLLS_PER_DAY = 86_400 / 15  # per source, at the default interval
DAILY_BUDGET_MB = 50.0


async def test_memory_stays_flat_under_fast_polling(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, prefect: LabPrefect) -> None:
    """RSS over two minutes of polling every 1 s (15x the default rate) with 10 scrapes a
    second, after a warm-up: its growth per poll, over a day of polling at the default
    interval, must stay under 50 MB. benchmarks/memory.py measures the same for an hour."""
    process = Process("exporter", {"PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "1"},
                      scraped=True)
    process.start(exporter_env(postgres, pgbouncer, prefect.api_url))
    try:
        await measure([process], warmup=float(os.environ.get("MEMORY_WARMUP", "45")),
                      seconds=float(os.environ.get("MEMORY_SECONDS", "120")))
    finally:
        process.stop()
    print(process.report())
    assert process.polls > 150, process.report()  # three sources, every 1 s
    daily = process.growth_per_poll_mb() * 3 * DEFAULT_POLLS_PER_DAY
    assert daily < DAILY_BUDGET_MB, (
        f"{daily:.1f} MB a day at the default interval: " + process.report())
