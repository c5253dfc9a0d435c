"""Prefect poll benchmark: does a poll cost the same at 1,000 and at 100,000 flow runs?

Starts the lab (PostgreSQL, PgBouncer in transaction pooling, a Prefect 3.8.8 server without its
services whose database goes through PgBouncer), creates a work pool, a deployment and one
SCHEDULED run through the REST API, copies that run's row with generate_series straight into the
`flow_run` and `flow_run_state` tables (a fixed mix of states and times, see KINDS), and at each
size measures, in the same run on the same machine:

1. the exporter's PrefectSource.poll(): median wall time, HTTP requests per poll;
2. the baseline "an exporter that pages through runs": every SCHEDULED run through
   POST /flow_runs/filter, limit 200, offset paging, counted client-side;
3. PrefectHQ/prometheus-prefect-exporter, where it can be set up (a checkout and a virtualenv
   under /tmp): its /metrics scrape end to end, and its requests per scrape through a counting
   reverse proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from aiohttp import web

from exporter.app import build_sources
from exporter.config import load
from exporter.prefect.snapshot import PrefectSnapshot
from exporter.prefect.source import PrefectSource
from lab.common import LabError, free_port, lab_root, stop_process, wait_for_port
from lab.pgbouncer import LabPgBouncer, start_pgbouncer
from lab.postgres import LabPostgres, start_postgres
from lab.prefect import LabPrefect, start_prefect

PAGE = 200
POOL, DEPLOYMENT = "bench-pool", "bench"
CHUNK = 20_000  # rows per INSERT transaction
PPE_REPO = "https://github.com/PrefectHQ/prometheus-prefect-exporter"
SCRAPE_TIMEOUT = 900.0

# The mix of generated runs, by `i % 100`: [b0, b1) share, state type and name, expected start
# between now+lo and now+hi seconds, started, ended.
KINDS = """(VALUES
  (0, 20, 'SCHEDULED', 'Scheduled', -21600, -60, false, false),
  (20, 30, 'SCHEDULED', 'Late', -86400, -600, false, false),
  (30, 40, 'SCHEDULED', 'Scheduled', 60, 3600, false, false),
  (40, 60, 'SCHEDULED', 'Scheduled', 3600, 604800, false, false),
  (60, 90, 'COMPLETED', 'Completed', -2592000, -3600, true, true),
  (90, 94, 'FAILED', 'Failed', -2592000, -3600, true, true),
  (94, 95, 'CRASHED', 'Crashed', -2592000, -3600, true, true),
  (95, 98, 'RUNNING', 'Running', -3600, -60, true, false),
  (98, 100, 'PENDING', 'Pending', -600, -10, false, false))"""
MIX = ("60% SCHEDULED (20 overdue, 10 Late, 10 in the next hour, 20 up to a week ahead), "
       "30% COMPLETED, 4% FAILED, 1% CRASHED, 3% RUNNING, 2% PENDING")
MIXES = {
    "growing-history": f"the first --small runs as {MIX}; every later run finished "
                       "(COMPLETED/FAILED/CRASHED): history grows, the scheduler keeps a "
                       "bounded number of future runs",
    "scheduled-heavy": f"every run as {MIX}: a scheduler that creates far too many runs",
}
NEVER = 2**31 - 1

# Runs i in [$2, $3) copied from the template run $1; each with its own current state row (the
# two tables reference each other, so foreign-key triggers are off for this transaction).
INSERT_RUNS = f"""
WITH t AS (SELECT * FROM flow_run WHERE id = $1),
g AS (SELECT i, gen_random_uuid() AS id, gen_random_uuid() AS sid,
             ((i::bigint * 2654435761) % 4294967296) / 4294967296.0 AS f,
             -- from run $4 on, finished runs only (COMPLETED, FAILED, CRASHED buckets)
             CASE WHEN i >= $4 THEN 60 + i % 35 ELSE i % 100 END AS bucket
      FROM generate_series($2::int, $3::int - 1) AS i),
k(b0, b1, type, name, lo, hi, started, ended) AS {KINDS},
e AS (SELECT g.id, g.sid, g.i, k.type::state_type AS type, k.name, k.started, k.ended,
             now() + (k.lo + (k.hi - k.lo) * g.f) * interval '1 second' AS expected
      FROM g JOIN k ON g.bucket >= k.b0 AND g.bucket < k.b1),
r AS (SELECT e.*,
             CASE WHEN e.started THEN e.expected + interval '5 seconds' END AS start_time,
             CASE WHEN e.ended THEN e.expected + interval '65 seconds' END AS end_time,
             CASE WHEN e.ended THEN e.expected + interval '65 seconds'
                  WHEN e.started THEN e.expected + interval '5 seconds'
                  ELSE least(e.expected, now()) - interval '1 minute' END AS ts
      FROM e),
runs AS (
  INSERT INTO flow_run (id, created, updated, name, state_type, state_name, state_id,
      state_timestamp, run_count, expected_start_time, next_scheduled_start_time, start_time,
      end_time, total_run_time, flow_version, parameters, context, empirical_policy, tags,
      auto_scheduled, flow_id, deployment_id, work_queue_name, work_queue_id, job_variables,
      deployment_version, labels, created_by, infrastructure_document_id)
  SELECT r.id, least(r.expected, now()) - interval '2 minutes', r.ts, 'bench-' || r.i, r.type,
      r.name, r.sid, r.ts, CASE WHEN r.started THEN 1 ELSE 0 END, r.expected,
      CASE WHEN r.type = 'SCHEDULED' THEN r.expected END, r.start_time, r.end_time,
      CASE WHEN r.ended THEN interval '60 seconds' ELSE interval '0' END, t.flow_version,
      t.parameters, t.context, t.empirical_policy, t.tags, t.auto_scheduled, t.flow_id,
      t.deployment_id, t.work_queue_name, t.work_queue_id, t.job_variables,
      t.deployment_version, t.labels, t.created_by, t.infrastructure_document_id
  FROM r, t)
INSERT INTO flow_run_state (id, created, updated, type, "timestamp", name, state_details,
    flow_run_id)
SELECT r.sid, r.ts, r.ts, r.type, r.ts, r.name,
       jsonb_build_object('flow_run_id', r.id) || CASE WHEN r.type = 'SCHEDULED'
           THEN jsonb_build_object('scheduled_time', r.expected) ELSE '{{}}'::jsonb END,
       r.id
FROM r
"""
STATE_COUNTS = "SELECT state_type::text, count(*) FROM flow_run GROUP BY 1"
CONSISTENT = ("SELECT count(*) FROM flow_run f JOIN flow_run_state s "
              "ON s.id = f.state_id AND s.flow_run_id = f.id AND s.type = f.state_type")


# ---- lab and data ------------------------------------------------------------------------------

@dataclass
class Lab:
    root: Path
    pg: LabPostgres | None = None
    bouncer: LabPgBouncer | None = None
    prefect: LabPrefect | None = None

    def stop(self) -> None:
        for server in (self.prefect, self.bouncer, self.pg):
            if server is not None:
                server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_lab(lab: Lab) -> LabPrefect:
    lab.pg = start_postgres(lab.root / "postgres")
    lab.bouncer = start_pgbouncer(lab.root / "pgbouncer", lab.pg)
    lab.prefect = start_prefect(lab.root / "prefect", lab.bouncer, services=False)
    return lab.prefect


async def create_template_run(api_url: str) -> str:
    """A work pool, a deployment in it and one overdue SCHEDULED run, through the REST API."""
    async with httpx.AsyncClient(base_url=api_url + "/", timeout=30) as client:
        async def post(path: str, body: dict[str, object]) -> dict[str, object]:
            response = await client.post(path, json=body)
            response.raise_for_status()
            data: dict[str, object] = response.json()
            return data

        await post("work_pools/", {"name": POOL, "type": "process"})
        flow = await post("flows/", {"name": f"flow-{DEPLOYMENT}"})
        deployment = await post("deployments/", {"name": DEPLOYMENT, "flow_id": flow["id"],
                                                  "work_pool_name": POOL})
        when = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
        run = await post(f"deployments/{deployment['id']}/create_flow_run", {
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}}})
        return str(run["id"])


async def add_runs(pg: LabPostgres, template: str, first: int, last: int,
                   finished_from: int = NEVER) -> float:
    """Runs first..last-1 in chunks, then VACUUM ANALYZE as autovacuum would. Seconds taken."""
    started = time.monotonic()
    conn = await asyncpg.connect(pg.dsn())
    try:
        for lo in range(first, last, CHUNK):
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(INSERT_RUNS, template, lo, min(lo + CHUNK, last),
                                   finished_from)
        await conn.execute("VACUUM ANALYZE flow_run, flow_run_state")
    finally:
        await conn.close()
    return time.monotonic() - started


async def run_counts(pg: LabPostgres) -> tuple[dict[str, int], int]:
    """Runs by state type, and how many have a state row that matches them."""
    conn = await asyncpg.connect(pg.dsn())
    try:
        by_type = {str(r[0]): int(r[1]) for r in await conn.fetch(STATE_COUNTS)}
        return by_type, int(await conn.fetchval(CONSISTENT))
    finally:
        await conn.close()


# ---- the exporter ------------------------------------------------------------------------------

@dataclass
class PollResult:
    median: float
    requests: list[int]
    scheduled_seen: int
    latency: dict[str, float]  # mean seconds per request over the timed polls, by endpoint


def prefect_source(api_url: str) -> PrefectSource:
    """The source exactly as the exporter's build_sources makes it, with default settings."""
    sources = build_sources(load({"prefect_api_url": api_url}, environ={}))
    source = sources[0]
    assert isinstance(source, PrefectSource)
    return source


def total_requests(snapshot: PrefectSnapshot) -> int:
    return sum(r.count for r in snapshot.requests.values())


def mean_latency(first: PrefectSnapshot, last: PrefectSnapshot) -> dict[str, float]:
    latency = {}
    for endpoint, stats in last.requests.items():
        before = first.requests.get(endpoint)
        count = stats.count - (before.count if before else 0)
        seconds = stats.seconds - (before.seconds if before else 0.0)
        if count:
            latency[endpoint] = seconds / count
    return latency


async def time_exporter(api_url: str, polls: int) -> PollResult:
    source = prefect_source(api_url)
    try:
        first = previous = await source.poll()  # warm-up: connections, server-side caches
        times, requests = [], []
        for _ in range(polls):
            started = time.perf_counter()
            snapshot = await source.poll()
            times.append(time.perf_counter() - started)
            requests.append(total_requests(snapshot) - total_requests(previous))
            previous = snapshot
    finally:
        await source.close()
    return PollResult(statistics.median(times), requests,
                      previous.scheduling.runs_by_state_type.get("SCHEDULED", -1),
                      mean_latency(first, previous))


# ---- the baseline: page through every SCHEDULED run --------------------------------------------

@dataclass
class PagingResult:
    seconds: float
    runs: int  # counted client-side (or expected, when extrapolated)
    pages: int
    rounds: int
    note: str = ""


SCHEDULED_FILTER = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}


async def fetch_page(client: httpx.AsyncClient, offset: int) -> int:
    response = await client.post("flow_runs/filter",
                                 json={**SCHEDULED_FILTER, "limit": PAGE, "offset": offset})
    response.raise_for_status()
    return len(response.json())


async def page_through(client: httpx.AsyncClient, cap: int,
                       deadline: float) -> tuple[int, int, bool]:
    """Pages until a short page, the cap, or the deadline: (runs counted, pages, finished)."""
    runs = pages = 0
    while runs < cap:
        if time.monotonic() > deadline:
            return runs, pages, False
        got = await fetch_page(client, pages * PAGE)
        runs, pages = runs + got, pages + 1
        if got < PAGE:
            break
    return runs, pages, True


async def extrapolate(client: httpx.AsyncClient, done_pages: int, total_pages: int,
                      samples: int) -> tuple[float, int]:
    """Seconds the pages not fetched would take: pages at evenly spaced offsets over the rest
    (offset paging gets slower as the offset grows), their mean times the pages left; and how
    many pages were sampled."""
    left = total_pages - done_pages
    if left <= 0:
        return 0.0, 0
    picks = sorted({done_pages + (left * k) // samples for k in range(samples)})
    times = []
    for page in picks:
        started = time.perf_counter()
        await fetch_page(client, page * PAGE)
        times.append(time.perf_counter() - started)
    return statistics.mean(times) * left, len(times)


async def time_paging(api_url: str, expected: int, rounds: int, budget: float,
                      cap: int) -> PagingResult:
    async with httpx.AsyncClient(base_url=api_url + "/", timeout=120) as client:
        await fetch_page(client, 0)  # warm-up
        times: list[float] = []
        runs = pages = 0
        spent_from = time.monotonic()
        for _ in range(rounds):
            started = time.perf_counter()
            runs, pages, finished = await page_through(client, cap, spent_from + budget)
            if not finished and times:
                break  # an earlier round finished: keep its figures
            if not finished:
                return await partial_paging(client, time.perf_counter() - started, pages,
                                            min(expected, cap))
            times.append(time.perf_counter() - started)
            if time.monotonic() - spent_from > budget / 2:
                break  # another round would not fit
    return PagingResult(statistics.median(times), runs, pages, len(times))


async def partial_paging(client: httpx.AsyncClient, elapsed: float, done: int,
                         expected: int) -> PagingResult:
    total_pages = expected // PAGE + 1
    rest, samples = await extrapolate(client, done, total_pages, 20)
    note = (f"EXTRAPOLATED: {done} pages took {elapsed:.1f}s before the time budget ran out; "
            f"the other {total_pages - done} estimated from {samples} pages at evenly spaced "
            f"offsets")
    return PagingResult(elapsed + rest, expected, total_pages, 1, note)


# ---- PrefectHQ/prometheus-prefect-exporter -----------------------------------------------------

def _run(argv: list[str], timeout: float) -> str | None:
    """None when it worked, else a one-line reason."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}"
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"{' '.join(argv[:2])} failed: {lines[-1] if lines else done.returncode}"
    return None


def ensure_ppe(src: Path, venv: Path) -> str | None:
    """A checkout of prometheus-prefect-exporter and a virtualenv with its requirements, made
    once and kept under /tmp. None when ready, else why not."""
    if not (src / "main.py").exists():
        reason = _run(["git", "clone", "--depth", "1", "--quiet", PPE_REPO, str(src)], 180)
        if reason:
            return f"cannot clone {PPE_REPO} into {src}: {reason}"
    if (venv / ".installed").exists():
        return None
    reason = _run([sys.executable, "-m", "venv", "--clear", str(venv)], 120) or _run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r",
         str(src / "requirements.txt")], 1200)
    if reason:
        return f"cannot install its requirements into {venv}: {reason}"
    (venv / ".installed").touch()
    return None


def ppe_commit(src: Path) -> str:
    done = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown commit"


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class CountingProxy:
    """A reverse proxy on loopback that counts the requests it forwards, by method and path."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.counts: Counter[str] = Counter()
        self.port = free_port()
        self._client = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.Response:
        self.counts[f"{request.method} {_ID.sub('{id}', request.path)}"] += 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "accept", "authorization")}
        upstream = await self._client.request(request.method, self.upstream + request.path_qs,
                                              content=await request.read(), headers=headers)
        return web.Response(status=upstream.status_code, body=upstream.content, headers={
            "Content-Type": upstream.headers.get("content-type", "application/json")})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._client.aclose()


@dataclass
class Ppe:
    """One prometheus-prefect-exporter process; it reads the API on each scrape."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path


def start_ppe(src: Path, venv: Path, api_url: str, home: Path) -> Ppe:
    home.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), home / "exporter.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": api_url,
           "METRICS_ADDR": "127.0.0.1", "METRICS_PORT": str(port), "LOG_LEVEL": "WARNING"}
    with log.open("ab") as out:
        proc = subprocess.Popen([str(venv / "bin" / "python"), "main.py"], cwd=src, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    wait_for_port(port, 120, "prometheus-prefect-exporter", proc, log)
    return Ppe(proc, port, log)


async def scrape(port: int) -> tuple[float, int]:
    """One end-to-end /metrics scrape: seconds, and the samples in it."""
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT) as client:
        started = time.perf_counter()
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
        seconds = time.perf_counter() - started
    response.raise_for_status()
    if b"prefect_info_flow_runs" not in response.content:
        raise LabError("its scrape came back without the flow-run metrics (collection failed)")
    samples = sum(1 for line in response.text.splitlines() if line and line[0] != "#")
    return seconds, samples


@dataclass
class PpeResult:
    median: float
    scrapes: int
    samples: int
    requests: int
    by_endpoint: dict[str, int] = field(default_factory=dict)


async def time_ppe(direct: Ppe, counted: Ppe, proxy: CountingProxy, rounds: int,
                   budget: float) -> PpeResult:
    """Timed scrapes of the instance that talks to Prefect directly (within the budget), then one
    scrape of the instance behind the counting proxy."""
    times: list[float] = []
    samples = 0
    spent_from = time.monotonic()
    for _ in range(rounds):
        seconds, samples = await scrape(direct.port)
        times.append(seconds)
        if time.monotonic() - spent_from + seconds > budget:
            break
    before = Counter(proxy.counts)
    await scrape(counted.port)
    delta = proxy.counts - before
    return PpeResult(statistics.median(times), len(times), samples, delta.total(),
                     dict(delta.most_common()))


# ---- one size ----------------------------------------------------------------------------------

@dataclass
class SizeResult:
    runs: int
    by_type: dict[str, int]
    insert_seconds: float
    exporter: PollResult
    paging: PagingResult
    ppe: PpeResult | str  # or why it was not measured


@dataclass
class Bench:
    args: argparse.Namespace
    lab: Lab
    template: str = ""
    ppe: tuple[Ppe, Ppe, CountingProxy] | None = None
    ppe_skip: str = ""

    @property
    def pg(self) -> LabPostgres:
        assert self.lab.pg is not None
        return self.lab.pg

    @property
    def api_url(self) -> str:
        assert self.lab.prefect is not None
        return self.lab.prefect.api_url


async def measure(bench: Bench, inserted: float) -> SizeResult:
    args = bench.args
    by_type, consistent = await run_counts(bench.pg)
    total = sum(by_type.values())
    if consistent != total:
        raise LabError(f"{total - consistent} runs without a matching state row")
    print(f"  {total:,} runs in the database; polling the exporter", flush=True)
    exporter = await time_exporter(bench.api_url, args.polls)
    scheduled = by_type.get("SCHEDULED", 0)
    print(f"  paging through {scheduled:,} SCHEDULED runs", flush=True)
    paging = await time_paging(bench.api_url, scheduled, args.baseline_rounds, args.budget,
                               args.paging_cap)
    ppe: PpeResult | str = bench.ppe_skip
    if bench.ppe is not None:
        print("  scraping prometheus-prefect-exporter", flush=True)
        ppe = await guarded(time_ppe(*bench.ppe, args.ppe_scrapes, args.budget))
    return SizeResult(total, by_type, inserted, exporter, paging, ppe)


async def guarded(work: Awaitable[PpeResult]) -> PpeResult | str:
    try:
        return await work
    except (httpx.HTTPError, LabError) as exc:
        return f"scrape failed: {type(exc).__name__}: {str(exc)[:200]}"


async def start_ppe_pair(bench: Bench) -> None:
    """The third-party exporter twice: direct (timed) and behind the counting proxy."""
    args = bench.args
    if args.no_ppe:
        bench.ppe_skip = "skipped (--no-ppe)"
        return
    reason = await asyncio.to_thread(ensure_ppe, args.ppe_dir, args.ppe_venv)
    if reason:
        bench.ppe_skip = f"not measured: {reason}"
        return
    proxy = CountingProxy(bench.api_url.removesuffix("/api"))
    await proxy.start()
    started: list[Ppe] = []
    home = bench.lab.root / "ppe"
    try:  # in a thread: its start-up health check goes through the proxy on this event loop
        for name, url in (("direct", bench.api_url),
                          ("counted", f"http://127.0.0.1:{proxy.port}/api")):
            started.append(await asyncio.to_thread(start_ppe, args.ppe_dir, args.ppe_venv, url,
                                                   home / name))
    except LabError as exc:
        for ppe in started:
            stop_process(ppe.proc)
        await proxy.stop()
        bench.ppe_skip = f"not measured: it did not start: {str(exc)[:300]}"
        return
    bench.ppe = (started[0], started[1], proxy)


async def stop_ppe_pair(bench: Bench) -> None:
    if bench.ppe is not None:
        direct, counted, proxy = bench.ppe
        for ppe in (direct, counted):
            stop_process(ppe.proc)
        await proxy.stop()
        bench.ppe = None


# ---- report ------------------------------------------------------------------------------------

def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<48}{value:>12}   {note}".rstrip())


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_size(r: SizeResult) -> None:
    e, p = r.exporter, r.paging
    types = ", ".join(f"{k} {v:,}" for k, v in sorted(r.by_type.items(), key=lambda kv: -kv[1]))
    print(f"\nAt {r.runs:,} flow runs ({types}; rows added in {r.insert_seconds:.1f}s):")
    line(f"exporter poll, median of {len(e.requests)}", ms(e.median),
         f"{sorted(set(e.requests))} requests per poll; SCHEDULED seen {e.scheduled_seen:,}")
    print("    mean latency per request, up to 4 in flight: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" for k, v in sorted(e.latency.items(), key=lambda kv: -kv[1])))
    line(f"paging baseline, median of {p.rounds}", ms(p.seconds),
         f"{p.pages} requests; {'expected' if p.note else 'counted'} {p.runs:,} SCHEDULED")
    if p.note:
        print(f"    {p.note}")
    line("exporter / paging baseline", f"{e.median / p.seconds:.3f}x")
    if isinstance(r.ppe, str):
        print(f"  prometheus-prefect-exporter: {r.ppe}")
        return
    q = r.ppe
    line(f"prometheus-prefect-exporter scrape, median of {q.scrapes}", ms(q.median),
         f"{q.requests} requests per scrape; {q.samples:,} samples")
    print("    its requests: " + ", ".join(f"{k} {v}" for k, v in q.by_endpoint.items()))
    line("exporter / prometheus-prefect-exporter", f"{e.median / q.median:.3f}x")


def print_ratios(small: SizeResult, large: SizeResult) -> None:
    ratio = large.exporter.median / small.exporter.median
    a, b = sorted(set(small.exporter.requests)), sorted(set(large.exporter.requests))
    verdict = "OK" if len(a) == 1 and a == b else "DIFFERENT"
    print(f"\n{large.runs:,} runs vs {small.runs:,} runs:")
    line("exporter poll time ratio", f"{ratio:.2f}x", "(target < 2x)")
    line("exporter requests per poll", f"{a} vs {b}", f"(must be equal: {verdict})")
    paging = large.paging.seconds / small.paging.seconds
    line("paging baseline time ratio", f"{paging:.2f}x",
         f"({small.paging.pages} -> {large.paging.pages} requests)")
    if isinstance(small.ppe, PpeResult) and isinstance(large.ppe, PpeResult):
        line("prometheus-prefect-exporter scrape time ratio",
             f"{large.ppe.median / small.ppe.median:.2f}x",
             f"({small.ppe.requests} -> {large.ppe.requests} requests per scrape)")


# ---- main --------------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> None:
    bench = Bench(args, Lab(lab_root("prefect-pg-bench-")))
    try:
        prefect = await asyncio.to_thread(start_lab, bench.lab)
        bench.template = await create_template_run(prefect.api_url)
        print(f"lab up: Prefect 3.8.8 at {prefect.api_url} (services off), its database through "
              f"PgBouncer (transaction pooling)\nruns: 1 created through the REST API, the rest "
              f"copied from it in SQL; mix {args.mix}: {MIXES[args.mix]}", flush=True)
        await start_ppe_pair(bench)
        if bench.ppe is not None:
            print(f"prometheus-prefect-exporter {ppe_commit(args.ppe_dir)} running from "
                  f"{args.ppe_dir} (defaults: PAGINATION_LIMIT 200, OFFSET_MINUTES 3)")
        results = []
        have = 1
        finished_from = args.small if args.mix == "growing-history" else NEVER
        for size in (args.small, args.large):
            seconds = await add_runs(bench.pg, bench.template, have, size, finished_from)
            have = size
            results.append(await measure(bench, seconds))
            print_size(results[-1])
        print_ratios(*results)
    finally:
        await stop_ppe_pair(bench)
        await asyncio.to_thread(bench.lab.stop)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run prefect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add: Callable[..., object] = parser.add_argument
    add("--small", type=int, default=1_000, help="flow runs at the first size")
    add("--large", type=int, default=100_000, help="flow runs at the second size")
    add("--polls", type=int, default=15, help="exporter polls timed at each size")
    add("--baseline-rounds", type=int, default=3, help="paging rounds at most, at each size")
    add("--paging-cap", type=int, default=100_000, help="the paging baseline stops at this many")
    add("--budget", type=float, default=300.0,
        help="seconds for the paging baseline (and the third-party scrapes) at each size; past "
             "it, pages are sampled and the rest extrapolated")
    add("--ppe-scrapes", type=int, default=3, help="prometheus-prefect-exporter scrapes timed")
    add("--ppe-dir", type=Path, default=Path("/tmp/prometheus-prefect-exporter"),
        help="its checkout (cloned there when missing)")
    add("--ppe-venv", type=Path, default=Path("/tmp/prometheus-prefect-exporter-venv"),
        help="its virtualenv (made there when missing)")
    add("--no-ppe", action="store_true", help="do not measure prometheus-prefect-exporter")
    add("--mix", choices=tuple(MIXES), default="growing-history",
        help="how the generated runs are spread over states: " + "; ".join(
            f"{name}: {text}" for name, text in MIXES.items()))
    args = parser.parse_args(argv)
    if not 1 < args.small < args.large:
        parser.error("need 1 < --small < --large")
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    asyncio.run(run(args))
    print(f"\n(whole run {math.ceil(time.monotonic() - started)}s)")


if __name__ == "__main__":
    main()
