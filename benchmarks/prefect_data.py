"""The Prefect benchmark's data: one template run created through the REST API, then runs and
events copied from it in SQL (generate_series) into each size's database, a copy of the one
before (CREATE DATABASE ... TEMPLATE); what each size holds, counted."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from lab.postgres import APP_ROLE, LabPostgres
from lab.waiting import eventually

POOL, DEPLOYMENT = "bench-pool", "bench"
CHUNK = 20_000  # rows per INSERT transaction


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



@dataclass(frozen=True)
class Size:
    """One size of the data, in a database of its own, served by a Prefect server of its own."""

    database: str
    runs: int
    events: int



# While the template is made the services run (the event persister stores its events), but
# not the scheduler nor late_runs: the template run stays as created.
TEMPLATE_ENV = {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}



def clone_database(pg: LabPostgres, source: str, target: str) -> None:
    """target as a file copy of source (CREATE DATABASE ... TEMPLATE), which must have no
    session: PgBouncer's idle server connections to it are ended first."""
    pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}'",
            database="postgres")
    pg.psql(f"CREATE DATABASE {target} TEMPLATE {source} OWNER {APP_ROLE}", database="postgres")



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
    found: list[object] = []

    async def stored() -> bool:
        found[:] = [await conn.fetchval(TEMPLATE_EVENT)]
        return found[0] is not None

    try:
        await eventually(stored, timeout, "a flow-run event stored", interval=0.5)
        return str(found[0])
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
