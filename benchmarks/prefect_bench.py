"""Prefect poll benchmark: does a poll cost the same at 1,000 and at 100,000 flow runs, and at
1,000 and at 1,000,000 events?

Starts the lab (PostgreSQL, PgBouncer in transaction pooling, Prefect 3.8.8 servers whose
databases go through PgBouncer). A server with its event persister on creates a work pool, a
deployment and one SCHEDULED run through the REST API, so the events of that run are real rows,
and stops. Each size is a database of its own, a copy of the one before (CREATE DATABASE ...
TEMPLATE) plus what it lacks: that run's row copied with generate_series into `flow_run` and
`flow_run_state` (a fixed mix of states and times, see KINDS), and one of its real events into
`events` and `event_resources` (half of them renamed flow-run heartbeats, spread over the
retention period, see INSERT_EVENTS). Then a server without its services per size (nothing
changes or deletes the data), all running at once, and measured in the same run:

1. the exporter's PrefectSource.poll(): median wall time, HTTP requests per poll; as it runs
   (retention read every 5 minutes, cached in between) and with retention read on every poll;
2. the baseline "an exporter that pages through runs": every SCHEDULED run through
   POST /flow_runs/filter, limit 200, offset paging, counted client-side;
3. PrefectHQ/prometheus-prefect-exporter, where it can be set up (a checkout and a virtualenv
   under /tmp): its /metrics scrape end to end, and its requests per scrape through a counting
   reverse proxy.

Sizes: --small runs and --events-small events; --large runs, same events; --large runs and
--events events (the exporter alone: the others do not read events). The exporter's polls of
every size take turns, so a machine busy with something else slows them alike; ratios are
against the first size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from aiohttp import web

from exporter.app import build_sources
from exporter.config import load
from exporter.prefect import source as source_module
from exporter.prefect.snapshot import PrefectSnapshot
from exporter.prefect.source import PrefectSource
from lab.common import LabError, free_port, lab_root, stop_process, wait_for_port
from lab.pgbouncer import LabPgBouncer, start_pgbouncer
from lab.postgres import APP_ROLE, LabPostgres, start_postgres
from lab.prefect import LabPrefect, start_prefect

PAGE = 200
POOL, DEPLOYMENT = "bench-pool", "bench"
CHUNK = 20_000  # rows per INSERT transaction
PPE_REPO = "https://github.com/PrefectHQ/prometheus-prefect-exporter"
SCRAPE_TIMEOUT = 900.0

# The mix of generated runs, by `i % 100`: [b0, b1) share, state type and name, expected start
# between now+lo and now+hi seconds, started, ended (65 s after the expected start). Buckets 60
# to 95 are the old finished runs a growing history is made of; the others include runs ended
# within the last hour (the outcome counts) and unfinished ones in each state for up to two
# hours, about half of them past the 1 h stuck threshold (the stuck sample).
KINDS = """(VALUES
  (0, 18, 'SCHEDULED', 'Scheduled', -21600, -60, false, false),
  (18, 27, 'SCHEDULED', 'Late', -86400, -600, false, false),
  (27, 36, 'SCHEDULED', 'Scheduled', 60, 3600, false, false),
  (36, 52, 'SCHEDULED', 'Scheduled', 3600, 604800, false, false),
  (52, 56, 'COMPLETED', 'Completed', -3500, -120, true, true),
  (56, 58, 'FAILED', 'Failed', -3500, -120, true, true),
  (58, 59, 'CRASHED', 'Crashed', -3500, -120, true, true),
  (59, 60, 'CANCELLING', 'Cancelling', -7200, -60, true, false),
  (60, 90, 'COMPLETED', 'Completed', -2592000, -3700, true, true),
  (90, 94, 'FAILED', 'Failed', -2592000, -3700, true, true),
  (94, 95, 'CRASHED', 'Crashed', -2592000, -3700, true, true),
  (95, 98, 'RUNNING', 'Running', -7200, -60, true, false),
  (98, 100, 'PENDING', 'Pending', -7200, -10, false, false))"""
MIX = ("52% SCHEDULED (18 overdue, 9 Late, 9 due within the hour, 16 up to a week ahead), "
       "34% COMPLETED, 6% FAILED, 2% CRASHED (of these 7% ended within the last hour), "
       "3% RUNNING, 2% PENDING, 1% CANCELLING (for up to 2 h)")
MIXES = {
    "growing-history": f"the first --small runs as {MIX}; every later run finished over a "
                       "month (COMPLETED/FAILED/CRASHED, none within the hour): history grows, "
                       "the scheduler keeps a bounded number of future runs",
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

# Events i in [$2, $3) copied from the real event $1 (with its event_resources rows: the
# resource itself, role '', and each related one), occurred between $5 and $5 + $4 seconds ago.
# Even i are renamed flow-run heartbeats (on by default from Prefect 3.6.22, and most of a busy
# server's events), about ten runs' worth an hour; odd i keep the template's name.
INSERT_EVENTS = """
WITH t AS (SELECT * FROM events WHERE id = $1),
g AS (SELECT i, gen_random_uuid() AS id, i % 2 = 0 AS heartbeat,
             now() - ($5::float8 + $4::float8 * (((i::bigint * 2654435761) % 4294967296)
                                                 / 4294967296.0)) * interval '1 second'
                 AS occurred
      FROM generate_series($2::int, $3::int - 1) AS i),
e AS (SELECT g.*, CASE WHEN g.heartbeat THEN 'prefect.flow-run.' || md5(
                    (floor(extract(epoch FROM g.occurred) / 3600)::bigint * 10 + g.i % 10)::text
                  )::uuid END AS run
      FROM g),
ev AS (
  INSERT INTO events (id, occurred, event, resource_id, resource, related_resource_ids, related,
                      payload, received, recorded, follows, created, updated)
  SELECT e.id, e.occurred,
         CASE WHEN e.heartbeat THEN 'prefect.flow-run.heartbeat' ELSE t.event END,
         coalesce(e.run, t.resource_id),
         CASE WHEN e.heartbeat THEN t.resource || jsonb_build_object('prefect.resource.id', e.run)
              ELSE t.resource END,
         t.related_resource_ids, t.related, t.payload, e.occurred + interval '50 ms',
         e.occurred + interval '80 ms', NULL, e.occurred, e.occurred
  FROM e, t
  RETURNING id, occurred, resource_id, resource)
INSERT INTO event_resources (occurred, resource_id, resource_role, resource, event_id, created,
                             updated)
SELECT ev.occurred, CASE WHEN r.resource_role = '' THEN ev.resource_id ELSE r.resource_id END,
       r.resource_role, CASE WHEN r.resource_role = '' THEN ev.resource::json ELSE r.resource END,
       ev.id, ev.occurred, ev.occurred
FROM ev CROSS JOIN (SELECT * FROM event_resources WHERE event_id = $1) AS r
"""
EVENTS_CHUNK = 20_000
# History spreads over the 7-day retention period but ends 2 h short of its cut-off: nothing
# falls past retention however long the run takes (the exporter's retention read finds neither
# an overdue event nor one in the hour after the cut-off: the same two requests at every size).
HISTORY_SECONDS = 7 * 86400 - 2 * 3600
HISTORY_NEWEST_SECONDS = 60.0
# Before each size is measured, events of the last 4 minutes, as a live server keeps writing:
# the newest-event and heartbeat windows then hold events at every size.
RECENT_EVENTS, RECENT_SECONDS = 100, 240.0
TEMPLATE_EVENT = ("SELECT id FROM events WHERE event LIKE 'prefect.flow-run.%' "
                  "ORDER BY occurred DESC LIMIT 1")


# ---- lab and data ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Size:
    """One size of the data, in a database of its own, served by a Prefect server of its own."""

    database: str
    runs: int
    events: int


@dataclass
class Lab:
    root: Path
    pg: LabPostgres | None = None
    bouncer: LabPgBouncer | None = None
    servers: list[LabPrefect] = field(default_factory=list)

    def stop(self) -> None:
        for server in (*self.servers, self.bouncer, self.pg):
            if server is not None:
                server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# While the template is made the services run (the event persister stores its events), but
# not the scheduler nor late_runs: the template run stays as created.
TEMPLATE_ENV = {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}


def start_lab(lab: Lab, sizes: list[Size]) -> LabPrefect:
    """PostgreSQL, PgBouncer routing every size's database, and a Prefect server with its
    services on the first one, where the template is made."""
    lab.pg = start_postgres(lab.root / "postgres")
    lab.bouncer = start_pgbouncer(lab.root / "pgbouncer", lab.pg,
                                  databases=tuple(s.database for s in sizes))
    template = start_prefect(lab.root / "template", lab.bouncer, database=sizes[0].database,
                             extra_env=TEMPLATE_ENV)
    lab.servers.append(template)
    return template


def clone_database(pg: LabPostgres, source: str, target: str) -> None:
    """target as a file copy of source (CREATE DATABASE ... TEMPLATE), which must have no
    session: PgBouncer's idle server connections to it are ended first."""
    pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}'",
            database="postgres")
    pg.psql(f"CREATE DATABASE {target} TEMPLATE {source} OWNER {APP_ROLE}", database="postgres")


def start_servers(lab: Lab, sizes: list[Size]) -> list[LabPrefect]:
    """A Prefect server without its services per size, all at once: nothing changes or deletes
    the data while they are measured."""
    assert lab.bouncer is not None
    servers = [LabPrefect(lab.root / f"prefect-{s.database}", lab.bouncer, database=s.database,
                          services=False) for s in sizes]
    lab.servers.extend(servers)
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()
    return servers


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


async def add_runs(pg: LabPostgres, database: str, template: str, first: int, last: int,
                   finished_from: int = NEVER) -> float:
    """Runs first..last-1 in chunks, then VACUUM ANALYZE as autovacuum would. Seconds taken."""
    started = time.monotonic()
    conn = await asyncpg.connect(pg.dsn(database=database))
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


async def template_event(pg: LabPostgres, database: str, timeout: float = 60) -> str:
    """A flow-run event the server stored (its event persister flushes every few seconds)."""
    conn = await asyncpg.connect(pg.dsn(database=database))
    try:
        deadline = time.monotonic() + timeout
        while (found := await conn.fetchval(TEMPLATE_EVENT)) is None:
            if time.monotonic() > deadline:
                raise LabError(f"no flow-run event stored within {timeout:g}s")
            await asyncio.sleep(0.5)
        return str(found)
    finally:
        await conn.close()


async def add_events(pg: LabPostgres, database: str, template: str, first: int, last: int,
                     span: float = HISTORY_SECONDS, newest: float = HISTORY_NEWEST_SECONDS,
                     analyze: bool = True) -> float:
    """Events first..last-1 in chunks (progress every 100,000), then VACUUM ANALYZE. Seconds."""
    started = time.monotonic()
    conn = await asyncpg.connect(pg.dsn(database=database))
    try:
        for lo in range(first, last, EVENTS_CHUNK):
            await conn.execute(INSERT_EVENTS, template, lo, min(lo + EVENTS_CHUNK, last), span,
                               newest)
            if (lo - first) // 100_000 != (min(lo + EVENTS_CHUNK, last) - first) // 100_000:
                print(f"    {min(lo + EVENTS_CHUNK, last):,} events, "
                      f"{time.monotonic() - started:.0f}s", flush=True)
        if analyze:
            await conn.execute("VACUUM ANALYZE events, event_resources")
    finally:
        await conn.close()
    return time.monotonic() - started


async def settle(pg: LabPostgres) -> float:
    """What the inserts left to write goes to disk before the polls: a CHECKPOINT, then the
    kernel's dirty pages (os.sync), so that writeback does not slow the polls. Seconds taken."""
    started = time.monotonic()
    conn = await asyncpg.connect(pg.dsn())
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    await asyncio.to_thread(os.sync)
    return time.monotonic() - started


EVENTS_BYTES = ("SELECT pg_total_relation_size('events') "
                "+ pg_total_relation_size('event_resources')")


@dataclass(frozen=True)
class Counts:
    by_type: dict[str, int]  # runs by state type
    consistent: int  # runs whose state row matches them
    events: int
    events_bytes: int  # events and event_resources, with their indexes


async def run_counts(pg: LabPostgres, database: str) -> Counts:
    conn = await asyncpg.connect(pg.dsn(database=database))
    try:
        by_type = {str(r[0]): int(r[1]) for r in await conn.fetch(STATE_COUNTS)}
        return Counts(by_type, int(await conn.fetchval(CONSISTENT)),
                      int(await conn.fetchval("SELECT count(*) FROM events")),
                      int(await conn.fetchval(EVENTS_BYTES)))
    finally:
        await conn.close()


# ---- the exporter ------------------------------------------------------------------------------

@dataclass
class PollResult:
    median: float
    best: float  # the fastest poll: what is left when nothing else wanted the CPU
    requests: list[int]
    scheduled_seen: int
    latency: dict[str, float]  # mean seconds per request over the timed polls, by endpoint
    seen: str  # what the last poll saw of the runs and events paths (that they were exercised)


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


def seen(snap: PrefectSnapshot) -> str:
    """The stuck sample, the outcome counts, heartbeats and events, as the poll read them."""
    parts = []
    if snap.runs is not None:
        stuck = sum(g.stuck for g in snap.runs.stuck.values())
        zombies = sum((snap.runs.without_heartbeat or {}).values())
        parts.append(f"stuck sample {snap.runs.sampled} unfinished runs ({stuck} stuck), "
                     f"heartbeats seen {snap.runs.heartbeats} ({zombies} zombies)")
    if snap.outcomes is not None:
        parts.append("ended within the hour " + ", ".join(
            f"{t} {n}" for t, n in snap.outcomes.totals.items()))
    if snap.events is not None and snap.events.newest is not None:
        parts.append(f"newest event {snap.taken_at - snap.events.newest:.0f}s old")
    if snap.retention is not None:
        parts.append(f"events past retention: {snap.retention.events_overdue}")
    return "; ".join(parts)


WARM_UP_POLLS = 3


@contextlib.contextmanager
def retention_every_poll() -> Iterator[None]:
    """The exporter reads retention every RETENTION_EVERY_SECONDS (5 min): one poll in many
    pays for it. Here every poll does, to time such a poll."""
    saved = source_module.RETENTION_EVERY_SECONDS
    source_module.RETENTION_EVERY_SECONDS = 0.0
    try:
        yield
    finally:
        source_module.RETENTION_EVERY_SECONDS = saved


@dataclass
class Timed:
    """One source's polls: the per-poll times and request counts."""

    source: PrefectSource
    every_poll: Callable[[], contextlib.AbstractContextManager[None]]
    times: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    first: PrefectSnapshot | None = None
    last: PrefectSnapshot | None = None

    async def poll(self, timed: bool) -> None:
        with self.every_poll():
            started = time.perf_counter()
            snapshot = await self.source.poll()
            seconds = time.perf_counter() - started
        if timed:
            assert self.last is not None
            self.times.append(seconds)
            self.requests.append(total_requests(snapshot) - total_requests(self.last))
        else:
            self.first = snapshot
        self.last = snapshot

    def result(self) -> PollResult:
        assert self.first is not None and self.last is not None
        return PollResult(statistics.median(self.times), min(self.times), self.requests,
                          self.last.scheduling.runs_by_state_type.get("SCHEDULED", -1),
                          mean_latency(self.first, self.last), seen(self.last))


async def time_exporters(api_urls: list[str],
                         polls: int) -> list[tuple[PollResult, PollResult]]:
    """At each size, the exporter's poll as it runs and reading retention on every poll. All
    the sizes' servers run at once and their polls take turns, one after the other: a machine
    busy with something else slows every size alike, and the ratios stay fair."""
    timed = [(Timed(prefect_source(url), contextlib.nullcontext),
              Timed(prefect_source(url), retention_every_poll)) for url in api_urls]
    every = [t for pair in timed for t in pair]
    try:
        for _ in range(WARM_UP_POLLS):  # connections, server-side caches, both loops' code
            for t in every:
                await t.poll(timed=False)
        for _ in range(polls):
            for t in every:
                await t.poll(timed=True)
    finally:
        for t in every:
            await t.source.close()
    return [(regular.result(), reading.result()) for regular, reading in timed]


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
    size: Size
    counts: Counts  # events: the size's, the setup's and the recent ones
    runs_seconds: float  # to add the runs of this size
    events_seconds: float  # to add the events of this size
    exporter: PollResult
    retention: PollResult  # every poll reads retention (one in many does as the exporter runs)
    paging: PagingResult | None = None  # None: not measured at this size
    ppe: PpeResult | str = "not measured at this size (it reads no events)"


@dataclass
class Bench:
    args: argparse.Namespace
    lab: Lab
    sizes: list[Size]
    template: str = ""
    template_event: str = ""

    @property
    def pg(self) -> LabPostgres:
        assert self.lab.pg is not None
        return self.lab.pg


async def build_data(bench: Bench) -> list[tuple[float, float]]:
    """Each size's database: a copy of the one before, plus the runs and events it lacks.
    Seconds taken to add the runs and the events, by size."""
    args, pg = bench.args, bench.pg
    finished_from = args.small if args.mix == "growing-history" else NEVER
    seconds = []
    previous = Size(bench.sizes[0].database, 1, 0)  # the template run; the setup's events
    for size in bench.sizes:
        print(f"size {size.runs:,} runs, {size.events:,} events: database {size.database}",
              flush=True)
        if size.database != previous.database:
            await asyncio.to_thread(clone_database, pg, previous.database, size.database)
        runs = await add_runs(pg, size.database, bench.template, previous.runs, size.runs,
                              finished_from) if size.runs > previous.runs else 0.0
        events = await add_events(pg, size.database, bench.template_event, previous.events,
                                  size.events) if size.events > previous.events else 0.0
        seconds.append((runs, events))
        previous = size
    return seconds


async def measure(bench: Bench, servers: list[LabPrefect],
                  seconds: list[tuple[float, float]]) -> list[SizeResult]:
    """The exporter at every size at once; the paging baseline and the third-party exporter
    at the first two sizes (they read no events), one size after the other."""
    args = bench.args
    counted = []
    for size in bench.sizes:  # as a live server keeps writing, just before the polls
        await add_events(bench.pg, size.database, bench.template_event, 0, RECENT_EVENTS,
                         RECENT_SECONDS, 1.0, analyze=False)
        counts = await run_counts(bench.pg, size.database)
        if counts.consistent != sum(counts.by_type.values()):
            raise LabError(f"{size.database}: {sum(counts.by_type.values()) - counts.consistent}"
                           " runs without a matching state row")
        counted.append(counts)
    flushed = await settle(bench.pg)
    print(f"\npolling the exporter at every size in turn (data flushed to disk in "
          f"{flushed:.1f}s)", flush=True)
    polls = await time_exporters([s.api_url for s in servers], args.polls)
    results = [SizeResult(size, counts, *added, *poll) for size, counts, added, poll
               in zip(bench.sizes, counted, seconds, polls, strict=True)]
    ppe_unavailable = await ppe_missing(args)
    for result, server in list(zip(results, servers, strict=True))[:2]:
        scheduled = result.counts.by_type.get("SCHEDULED", 0)
        print(f"  {result.size.runs:,} runs: paging through {scheduled:,} SCHEDULED runs",
              flush=True)
        result.paging = await time_paging(server.api_url, scheduled, args.baseline_rounds,
                                          args.budget, args.paging_cap)
        result.ppe = ppe_unavailable or await time_ppe_at(bench, server.api_url)
    return results


async def ppe_missing(args: argparse.Namespace) -> str:
    """Why prometheus-prefect-exporter is not measured; '' when it is ready to be."""
    if args.no_ppe:
        return "skipped (--no-ppe)"
    reason = await asyncio.to_thread(ensure_ppe, args.ppe_dir, args.ppe_venv)
    return f"not measured: {reason}" if reason else ""


async def time_ppe_at(bench: Bench, api_url: str) -> PpeResult | str:
    """prometheus-prefect-exporter against one size's server: started, scraped, stopped."""
    print(f"  scraping prometheus-prefect-exporter {ppe_commit(bench.args.ppe_dir)} (defaults: "
          "PAGINATION_LIMIT 200, OFFSET_MINUTES 3)", flush=True)
    pair = await start_ppe_pair(bench, api_url)
    if isinstance(pair, str):
        return pair
    try:
        return await guarded(time_ppe(*pair, bench.args.ppe_scrapes, bench.args.budget))
    finally:
        await stop_ppe_pair(pair)


async def guarded(work: Awaitable[PpeResult]) -> PpeResult | str:
    try:
        return await work
    except (httpx.HTTPError, LabError) as exc:
        return f"scrape failed: {type(exc).__name__}: {str(exc)[:200]}"


async def start_ppe_pair(bench: Bench,
                         api_url: str) -> tuple[Ppe, Ppe, CountingProxy] | str:
    """The third-party exporter twice: direct (timed) and behind the counting proxy; or why
    it did not start."""
    args = bench.args
    proxy = CountingProxy(api_url.removesuffix("/api"))
    await proxy.start()
    started: list[Ppe] = []
    home = bench.lab.root / "ppe" / str(proxy.port)
    try:  # in a thread: its start-up health check goes through the proxy on this event loop
        for name, url in (("direct", api_url),
                          ("counted", f"http://127.0.0.1:{proxy.port}/api")):
            started.append(await asyncio.to_thread(start_ppe, args.ppe_dir, args.ppe_venv, url,
                                                   home / name))
    except LabError as exc:
        for ppe in started:
            stop_process(ppe.proc)
        await proxy.stop()
        return f"not measured: it did not start: {str(exc)[:300]}"
    return started[0], started[1], proxy


async def stop_ppe_pair(pair: tuple[Ppe, Ppe, CountingProxy]) -> None:
    direct, counted, proxy = pair
    for ppe in (direct, counted):
        stop_process(ppe.proc)
    await proxy.stop()


# ---- report ------------------------------------------------------------------------------------

def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<48}{value:>12}   {note}".rstrip())


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_poll(label: str, e: PollResult) -> None:
    line(f"{label}, median of {len(e.requests)}", ms(e.median),
         f"best {ms(e.best)}; {sorted(set(e.requests))} requests per poll; SCHEDULED seen "
         f"{e.scheduled_seen:,}")
    print("    mean latency per request, up to 4 in flight: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" for k, v in sorted(e.latency.items(), key=lambda kv: -kv[1])))


def print_size(r: SizeResult) -> None:
    e, p = r.exporter, r.paging
    c = r.counts
    types = ", ".join(f"{k} {v:,}" for k, v in sorted(c.by_type.items(), key=lambda kv: -kv[1]))
    print(f"\nAt {r.size.runs:,} flow runs and {c.events:,} events ({types}; events and "
          f"event_resources {c.events_bytes / 1024**2:,.0f} MiB; runs added in "
          f"{r.runs_seconds:.1f}s, events in {r.events_seconds:.1f}s):")
    print_poll("exporter poll", e)
    print_poll("exporter poll reading retention", r.retention)
    print(f"    the poll saw: {e.seen}")
    if p is not None:
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


TARGET_RATIO = 1.5


def print_ratios(small: SizeResult, large: SizeResult) -> None:
    print(f"\n{large.size.runs:,} runs and {large.counts.events:,} events vs "
          f"{small.size.runs:,} runs and {small.counts.events:,} events:")
    for label, a, b in (("exporter poll", small.exporter, large.exporter),
                        ("exporter poll reading retention", small.retention, large.retention)):
        ratio = b.median / a.median
        line(f"{label} time ratio", f"{ratio:.2f}x",
             f"(target < {TARGET_RATIO:g}x: {'OK' if ratio < TARGET_RATIO else 'ABOVE'}; "
             f"best poll {b.best / a.best:.2f}x)")
        x, y = sorted(set(a.requests)), sorted(set(b.requests))
        verdict = "OK" if len(x) == 1 and x == y else "DIFFERENT"
        line(f"{label} requests", f"{x} vs {y}", f"(must be equal: {verdict})")
    if small.paging is not None and large.paging is not None:
        paging = large.paging.seconds / small.paging.seconds
        line("paging baseline time ratio", f"{paging:.2f}x",
             f"({small.paging.pages} -> {large.paging.pages} requests)")
    if isinstance(small.ppe, PpeResult) and isinstance(large.ppe, PpeResult):
        line("prometheus-prefect-exporter scrape time ratio",
             f"{large.ppe.median / small.ppe.median:.2f}x",
             f"({small.ppe.requests} -> {large.ppe.requests} requests per scrape)")


# ---- main --------------------------------------------------------------------------------------

def sizes_of(args: argparse.Namespace) -> list[Size]:
    sizes = [Size("prefect", args.small, args.events_small),
             Size("prefect_runs", args.large, args.events_small)]
    if args.events > args.events_small:
        sizes.append(Size("prefect_events", args.large, args.events))
    return sizes


async def run(args: argparse.Namespace) -> None:
    bench = Bench(args, Lab(lab_root("prefect-pg-bench-")), sizes_of(args))
    try:
        template = await asyncio.to_thread(start_lab, bench.lab, bench.sizes)
        bench.template = await create_template_run(template.api_url)
        bench.template_event = await template_event(bench.pg, bench.sizes[0].database)
        await asyncio.to_thread(template.stop)
        print(f"lab up: Prefect 3.8.8, its databases through PgBouncer (transaction pooling)\n"
              f"runs: 1 created through the REST API, the rest copied from it in SQL; mix "
              f"{args.mix}: {MIXES[args.mix]}\nevents: copies of one the server stored, half "
              f"of them heartbeats, over the last {HISTORY_SECONDS / 86400:.1f} days, and "
              f"{RECENT_EVENTS} more within {RECENT_SECONDS:g}s before the polls", flush=True)
        seconds = await build_data(bench)
        servers = await asyncio.to_thread(start_servers, bench.lab, bench.sizes)
        print(f"{len(servers)} Prefect servers without their services, one per size",
              flush=True)
        results = await measure(bench, servers, seconds)
        for result in results:
            print_size(result)
        for result in results[1:]:
            print_ratios(results[0], result)
        if len(results) == 3:
            print_ratios(results[1], results[2])
    finally:
        await asyncio.to_thread(bench.lab.stop)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run prefect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add: Callable[..., object] = parser.add_argument
    add("--small", type=int, default=1_000, help="flow runs at the first size")
    add("--large", type=int, default=100_000, help="flow runs at the second size")
    add("--events-small", type=int, default=1_000,
        help="events at the first two sizes (besides the recent ones added before each)")
    add("--events", type=int, default=1_000_000,
        help="events at the third size, with --large runs (not above --events-small: no third "
             "size)")
    add("--polls", type=int, default=21, help="exporter polls timed at each size (twice: as it "
        "runs, and reading retention on every poll, alternated)")
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
    if args.events_small < 1:
        parser.error("need --events-small >= 1")
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    asyncio.run(run(args))
    print(f"\n(whole run {math.ceil(time.monotonic() - started)}s)")


if __name__ == "__main__":
    main()
