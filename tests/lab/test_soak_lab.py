"""A short soak in CI (benchmarks/soak.py runs it for longer): no descriptor or session leak and
scrape latency unchanged while faults are injected and 8 scrapers run.

Memory under steady polling is a benchmark's (benchmarks/memory.py, an hour beside an idle
twin; its short form, --poll-seconds 0.5 --warmup 45 --seconds 60, was this module's second
test): a minute of RSS measured a step as a leak once in CI, and memory targets are measured in
benchmarks, not asserted in the suite. The soak below still bounds RSS under faults."""

from __future__ import annotations

import os

import pytest

from benchmarks.soak import soak
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from tests.lab.fault_proxy import FaultProxy

pytestmark = pytest.mark.lab

# 40 s: a run of 24 s was tried (thirds of 8 s) and failed once in the full suite on the p99
# ratio (4.9x) when the machine's load changed between the first and the last third.
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
