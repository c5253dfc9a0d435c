"""Soak: fast polling with faults injected and many concurrent scrapers.

    .venv/bin/python -m benchmarks.soak --seconds 600     # the long run (a benchmark)
    tests/test_soak_lab.py runs the same for 40 s in CI, with bounds.

The exporter runs as its own process against the lab's PostgreSQL, PgBouncer and Prefect (the
latter through a fault-injecting proxy). Every few seconds a fault is injected: the proxy turns
slow, erroring or garbled, and the exporter's PostgreSQL session is terminated. Meanwhile N
scrapers hit /metrics. Reported: RSS and open file descriptors of the exporter over time,
scrape latency early vs late, the most sessions the exporter ever held on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from exporter.postgres.source import APPLICATION_NAME
from lab.common import free_port
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.stack import running_lab
from lab.waiting import TimedOut, eventually
from tests.lab.fault_proxy import MODES, FaultProxy


@dataclass
class SoakResult:
    seconds: float
    rss_start_mb: float
    rss_end_mb: float
    fds_start: int
    fds_end: int
    early_p99: float
    late_p99: float
    early_p50: float
    late_p50: float
    scrapes: int
    failed_scrapes: int
    max_sessions: int
    faults: int
    alive: bool
    rss_samples: list[float] = field(default_factory=list)

    def report(self) -> str:
        return (f"soak {self.seconds:.0f}s: {self.scrapes} scrapes ({self.failed_scrapes} failed), "
                f"{self.faults} faults injected, exporter alive: {self.alive}\n"
                f"  RSS {self.rss_start_mb:.1f} -> {self.rss_end_mb:.1f} MB "
                f"(growth {self.rss_end_mb - self.rss_start_mb:+.1f} MB)\n"
                f"  open fds {self.fds_start} -> {self.fds_end}\n"
                f"  scrape latency first third p50 {self.early_p50 * 1000:.2f} ms "
                f"p99 {self.early_p99 * 1000:.2f} ms; last third p50 "
                f"{self.late_p50 * 1000:.2f} ms p99 {self.late_p99 * 1000:.2f} ms "
                f"(p99 ratio {self.late_p99 / self.early_p99:.2f}x)\n"
                f"  most PostgreSQL sessions held by the exporter at once: {self.max_sessions}")


def _proc_status(pid: int) -> tuple[float, int]:
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _answers(url: str) -> bool:
    """Whether the server at url answers at all (any status: it listens)."""
    try:
        async with httpx.AsyncClient() as client:
            await client.get(url, timeout=1)
        return True
    except httpx.TransportError:
        return False


async def soak(pg: LabPostgres, bouncer: LabPgBouncer, proxy: FaultProxy, seconds: float,
               scrapers: int = 8, fault_every: float = 4.0, warmup: float = 8.0) -> SoakResult:
    port = free_port()
    env = {**os.environ, "PREFECT_PG_EXPORTER_POSTGRES_DSN": pg.monitor_dsn(),
           "PREFECT_PG_EXPORTER_PGBOUNCER_DSN": bouncer.stats_dsn(),
           "PREFECT_PG_EXPORTER_PREFECT_API_URL": proxy.api_url,
           "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
           "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "1",  # the fastest it allows
           "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "1",
           "PREFECT_PG_EXPORTER_LOG_LEVEL": "error"}
    proc = subprocess.Popen([sys.executable, "-m", "exporter"], env=env)
    admin = await asyncpg.connect(pg.dsn())
    latencies: list[tuple[float, float]] = []
    failed = 0
    stop = time.monotonic() + warmup + seconds
    max_sessions = 0
    faults = 0

    async def scraper() -> None:
        nonlocal failed
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/metrics")
                    response.raise_for_status()
                    latencies.append((started, time.monotonic() - started))
                except httpx.HTTPError:
                    failed += 1
                    await asyncio.sleep(0.05)

    async def faulter() -> None:
        nonlocal faults, max_sessions
        i = 0
        while time.monotonic() < stop:
            await asyncio.sleep(fault_every / 4)
            rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                                     APPLICATION_NAME)
            max_sessions = max(max_sessions, len(rows))
            i += 1
            if i % 4:
                continue
            proxy.mode = MODES[(i // 4) % len(MODES)]
            for row in rows:
                await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])
            faults += 1

    try:
        with contextlib.suppress(TimedOut):  # not up by then: the scrapers count the errors
            await eventually(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 20,
                             "/healthz")
        tasks = [asyncio.create_task(scraper()) for _ in range(scrapers)]
        tasks.append(asyncio.create_task(faulter()))
        await asyncio.sleep(warmup)
        rss_start, fds_start = _proc_status(proc.pid)
        measure_from = time.monotonic()
        samples = []
        while time.monotonic() < stop:
            await asyncio.sleep(min(5.0, max(0.1, stop - time.monotonic())))
            samples.append(_proc_status(proc.pid)[0])
        await asyncio.gather(*tasks)
        proxy.mode = "pass"
        rss_end, fds_end = _proc_status(proc.pid)
        alive = proc.poll() is None
    finally:
        proxy.mode = "pass"
        await admin.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    measured = [(t, d) for t, d in latencies if t >= measure_from]
    third = seconds / 3
    early = [d for t, d in measured if t < measure_from + third]
    late = [d for t, d in measured if t >= measure_from + 2 * third]
    return SoakResult(seconds, rss_start, rss_end, fds_start, fds_end, _p(early, 0.99),
                      _p(late, 0.99), statistics.median(early or [0]),
                      statistics.median(late or [0]), len(measured), failed, max_sessions,
                      faults, alive, samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--scrapers", type=int, default=8)
    args = parser.parse_args()
    with running_lab("prefect-pg-soak-") as lab:
        pg = lab.postgres("pg")
        bouncer = lab.pgbouncer(pg, "pgb")
        proxy = FaultProxy(lab.prefect(bouncer, services=False).api_url)
        await proxy.start()
        try:
            result = await soak(pg, bouncer, proxy, args.seconds, args.scrapers)
            print(result.report())
            print("  RSS samples (MB): " + " ".join(f"{r:.1f}" for r in result.rss_samples))
        finally:
            await proxy.stop()


if __name__ == "__main__":
    asyncio.run(main())
