"""Memory over time: does the exporter's RSS stay flat under steady polling and scraping?

    benchmarks/run memory [--warmup 300] [--seconds 3600] [--poll-seconds 1]
                          [--variant NAME:ENV=VALUE,... ...]

Starts the lab (PostgreSQL, PgBouncer, a Prefect server with its services), then runs, side by
side in the same run on the same lab, exporter processes configured alike (all three sources,
poll every second), each scraped 10 times a second with gzip:

- `exporter`: the exporter as shipped;
- `idle`: the same exporter polling once an hour and never scraped, the baseline: what the
  interpreter and the allocator do on their own over the same time;
- any `--variant NAME:ENV=VALUE,...`: the exporter with other environment, to compare (e.g.
  `pg:PREFECT_PG_EXPORTER_PGBOUNCER_DSN=,PREFECT_PG_EXPORTER_PREFECT_API_URL=` polls PostgreSQL
  only; `scraped=0` leaves it unscraped).

After the warm-up, RSS is sampled every 5 s. Printed per process: RSS at the start and end of
the measurement, the least-squares slope in MB/hour, its projection over a day, the growth per
poll and the ratio of the slope to the goal (2 MB over 60 minutes), and for the polling
processes the growth per poll over a day of polling three sources at the default 15 s
interval (the short form's budget: under 50 MB).

`--poll-seconds` below 1 runs the exporters as `lab.fast_exporter` (the shipped exporter with
only the 1 s floor for people lowered): more polls in less time, the same code per poll. The
short form the suite once ran: `--poll-seconds 0.5 --warmup 45 --seconds 60` (360 polls).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lab.common import free_port, wait_for_port
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.stack import running_lab

GOAL_MB_PER_HOUR = 2.0
SAMPLE_EVERY = 5.0
DEFAULT_POLLS_PER_DAY = 86_400 / 15  # per source, at the default interval
DAILY_BUDGET_MB = 50.0  # the short form's budget for that day
MIN_POLLS_PER_DAY_FIGURE = 100  # fewer (the idle twin's few): no figure per poll over a day


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def thread_count(pid: int) -> int:
    """The process's threads: each may bring a malloc arena of its own, a step in RSS."""
    return len(os.listdir(f"/proc/{pid}/task"))


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB/hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / var * 3600


@dataclass
class Process:
    name: str
    env: dict[str, str]
    scraped: bool
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)  # at each sample
    scrapes: int = 0
    polls_start: float = 0.0
    polls_end: float = 0.0
    module: str = "exporter"  # lab.fast_exporter to poll faster than every second

    def start(self, base_env: dict[str, str]) -> None:
        self.port = free_port()
        env = {**os.environ, **base_env, **self.env,
               "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{self.port}"}
        env = {k: v for k, v in env.items() if v}  # `ENV=` in a variant unsets it
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=env,
                                     stdout=subprocess.DEVNULL)
        wait_for_port(self.port, 120, f"exporter {self.name}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)

    @property
    def polls(self) -> float:
        return self.polls_end - self.polls_start

    def growth_per_poll_mb(self) -> float:
        """The least-squares growth over the measurement, per poll of one source."""
        if not self.polls or len(self.samples) < 2:
            return 0.0
        duration = self.samples[-1][0] - self.samples[0][0]
        return slope_per_hour(self.samples) / 3600 * duration / self.polls

    def daily_mb(self) -> float:
        """The growth per poll over a day of polling three sources at the default interval."""
        return self.growth_per_poll_mb() * 3 * DEFAULT_POLLS_PER_DAY

    def report(self) -> str:
        slope = slope_per_hour(self.samples)
        polls = self.polls
        per_poll = self.growth_per_poll_mb() * 1024 * 1024
        return (f"{self.name:>10}: RSS {self.samples[0][1]:.1f} -> {self.samples[-1][1]:.1f} MB, "
                f"slope {slope:+.2f} MB/hour ({slope * 24:+.1f} MB/day), "
                f"{per_poll:+.0f} B/poll over {polls:.0f} polls, {self.scrapes} scrapes, "
                f"threads {self.threads[0]} -> {self.threads[-1]}; "
                f"{slope / GOAL_MB_PER_HOUR:+.2f}x the goal's {GOAL_MB_PER_HOUR:g} MB/hour"
                + (f"; per poll over a day at 15 s {self.daily_mb():+.1f} MB, "
                   f"{self.daily_mb() / DAILY_BUDGET_MB:+.2f}x the {DAILY_BUDGET_MB:g} MB budget"
                   if polls >= MIN_POLLS_PER_DAY_FIGURE else ""))


async def _polls(port: int) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("prefect_pg_exporter_source_polls_total{"))


async def _scrape(process: Process, stop: float) -> None:
    async with httpx.AsyncClient(timeout=5, headers={"Accept-Encoding": "gzip"}) as client:
        while time.monotonic() < stop:
            started = time.monotonic()
            response = await client.get(f"http://127.0.0.1:{process.port}/metrics")
            response.raise_for_status()
            process.scrapes += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))


async def measure(processes: list[Process], warmup: float, seconds: float) -> None:
    stop = time.monotonic() + warmup + seconds
    scrapers = [asyncio.create_task(_scrape(p, stop)) for p in processes if p.scraped]
    await asyncio.sleep(warmup)
    for p in processes:
        p.polls_start = await _polls(p.port)
    began = time.monotonic()
    while time.monotonic() < stop:
        now = time.monotonic() - began
        for p in processes:
            assert p.proc is not None
            p.samples.append((now, rss_mb(p.proc.pid)))
            p.threads.append(thread_count(p.proc.pid))
        await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, stop - time.monotonic())))
    await asyncio.gather(*scrapers)
    for p in processes:
        assert p.proc is not None
        p.samples.append((time.monotonic() - began, rss_mb(p.proc.pid)))
        p.threads.append(thread_count(p.proc.pid))
        p.polls_end = await _polls(p.port)


def exporter_env(pg: LabPostgres, bouncer: LabPgBouncer, api_url: str) -> dict[str, str]:
    return {"PREFECT_PG_EXPORTER_POSTGRES_DSN": pg.monitor_dsn(),
            "PREFECT_PG_EXPORTER_PGBOUNCER_DSN": bouncer.stats_dsn(),
            "PREFECT_PG_EXPORTER_PREFECT_API_URL": api_url,
            "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "1",
            "PREFECT_PG_EXPORTER_LOG_LEVEL": "error"}


def _variant(text: str) -> Process:
    """NAME:ENV=VALUE,ENV=VALUE; ENV `scraped=0` leaves that process unscraped."""
    name, _, assignments = text.partition(":")
    env = {}
    for assignment in filter(None, assignments.split(",")):
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:ENV=VALUE,...")
        env[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:ENV=VALUE,...")
    scraped = env.pop("scraped", "1") != "0"
    return Process(name, env, scraped=scraped)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--variant", type=_variant, action="append", default=[])
    args = parser.parse_args()
    with running_lab("prefect-pg-memory-") as lab:
        pg = lab.postgres("pg")
        bouncer = lab.pgbouncer(pg, "pgb")
        await run(args, exporter_env(pg, bouncer, lab.prefect(bouncer).api_url))


async def run(args: argparse.Namespace, base: dict[str, str]) -> None:
    """The exporter scraped, one idle, and the variants; each process stopped after."""
    module = "exporter" if args.poll_seconds >= 1 else "lab.fast_exporter"
    base = {**base, "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": f"{args.poll_seconds:g}"}
    processes = [Process("exporter", {}, scraped=True, module=module),
                 Process("idle", {"PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "3600"},
                         scraped=False), *args.variant]
    for variant in args.variant:
        variant.module = module
    try:
        for p in processes:
            p.start(base)
        await measure(processes, args.warmup, args.seconds)
        print(f"memory: {args.warmup:.0f} s warm-up, {args.seconds:.0f} s measured, poll every "
              f"{args.poll_seconds:g} s, /metrics scraped 10 times a second (gzip)")
        for p in processes:
            print("  " + p.report())
    finally:
        for p in processes:
            p.stop()


if __name__ == "__main__":
    asyncio.run(main())
