"""Live proof of issue #14's silent services: a real Prefect 3.8.8 server of the test's own, on a
PostgreSQL of its own, loses its background services (restarted with `--no-services`, as an API
replica whose services process died) and gets them back. A real Prometheus scrapes the exporter
with the shipped rules (their `for:` shortened).

- while the services run, a poll finds nothing wrong;
- without them: the scheduler stops topping up the interval deployment's future runs
  (scheduler_stalled, prefect_deployments_without_future_runs), overdue runs stay named
  Scheduled (late_runs_service_stalled, prefect_overdue_unmarked_runs), copies of the server's
  own events moved 8 days into the past stay past the 7-day retention (events_retention_lagging,
  prefect_retention_lag_seconds{kind="events"}), and a run that starts leaves no event
  (event_pipeline_stalled); each finding's alert fires;
- with the services back, the scheduler, late-runs and event findings and alerts clear, and
  Prefect's own db_vacuum deletes the copied events: they were rows past retention in Prefect's
  eyes too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter import alerting
from exporter.app import Exporter, build_sources
from exporter.config import load
from exporter.diagnosis import diagnose
from exporter.prefect.snapshot import PrefectSnapshot
from exporter.prefect.source import PrefectSource
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.prefect_api import PrefectAPI
from lab.prometheus import LabPrometheus
from tests.helpers import PREFECT_POLL, StartExporter, eventually, scrape

pytestmark = pytest.mark.lab

POOL = "pool-services"
INTERVAL_SECONDS = 10
LATE_AFTER_SECONDS = 5  # the lab sets late_runs.loop_seconds to 1: unmarked after 5 + 2 * 1 s
LATE_LOOP_SECONDS = 1
# The scheduler, made quick: every 2 s (1 s for new deployments) it keeps 2-3 future runs of
# each schedule, up to 20 s ahead (defaults: 60 s, 3 to 100 runs, at least an hour ahead). Its
# future runs would all be in the past 30 s after it stops: the test moves them there.
SCHEDULER_ENV = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT20S",
}
PIPELINE_STALL_SECONDS = 20  # no new event for this long while runs start (default 600)
# The alerts' `for:` a 120th of the shipped one: 30 min becomes 15 s, still 15 evaluations in a
# row (Prometheus evaluates every second here)
FOR_SCALE = 1 / 120
# Prefect's default server.events.retention_period is 7 days: copies 8 days old are a day past it
PAST = "interval '8 days'"
RETENTION_SECONDS = 7 * 86400
STALLED = ("scheduler_stalled", "late_runs_service_stalled", "event_pipeline_stalled")
EXPECTED = {  # alert -> labels of this test's incident
    "PrefectSchedulerStalled": {},
    "PrefectLateRunsServiceStalled": {"work_pool": POOL},
    "PrefectEventPipelineStalled": {},
    "PrefectRetentionLagging": {"kind": "events"},
}

# Every event the server stored, and its resources, copied with new ids and every timestamp
# moved into the past, as if written 8 days ago and never cleaned up. One statement: the copies
# are not copied again.
COPY_EVENTS_INTO_PAST = f"""
WITH source AS (SELECT id, gen_random_uuid() AS copy FROM events),
copied AS (
  INSERT INTO events (id, occurred, event, resource_id, resource, related_resource_ids, related,
                      payload, received, recorded, follows, created, updated)
  SELECT s.copy, e.occurred - {PAST}, e.event, e.resource_id, e.resource,
         e.related_resource_ids, e.related, e.payload, e.received - {PAST},
         e.recorded - {PAST}, e.follows, e.created - {PAST}, e.updated - {PAST}
  FROM events e JOIN source s USING (id)
  RETURNING id)
INSERT INTO event_resources (occurred, resource_id, resource_role, resource, event_id, created,
                             updated)
SELECT r.occurred - {PAST}, r.resource_id, r.resource_role, r.resource, s.copy,
       r.created - {PAST}, r.updated - {PAST}
FROM event_resources r JOIN source s ON s.id = r.event_id
"""
PAST_RETENTION = ("SELECT (SELECT count(*) FROM events WHERE occurred < now() - interval '7 days')"
                  " || ' ' || (SELECT count(*) FROM event_resources "
                  "WHERE occurred < now() - interval '7 days')")


@pytest.fixture
async def server(lab_dir: Path, own_postgres: LabPostgres,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LabPrefect]:
    """A Prefect server of this test's own (it is restarted): the session one is shared."""
    prefect = LabPrefect(lab_dir / tmp_path_factory.mktemp("prefect-services").name,
                         own_postgres, late_after_seconds=LATE_AFTER_SECONDS,
                         extra_env=SCHEDULER_ENV)
    prefect.start()
    yield prefect
    prefect.stop()


def restart(prefect: LabPrefect, services: bool) -> None:
    prefect.stop()
    prefect.services = services
    prefect.start()


async def poll_once(api_url: str) -> PrefectSnapshot:
    """One poll by the exporter's Prefect source, as the doctor makes it."""
    source = build_sources(load({"prefect_api_url": api_url}, environ={}))[0]
    assert isinstance(source, PrefectSource)
    try:
        return await source.poll()
    finally:
        await source.close()


async def future_runs(api: PrefectAPI) -> int:
    return await api.count({"flow_runs": {
        "state": {"type": {"any_": ["SCHEDULED"]}},
        "expected_start_time": {"after_": datetime.now(UTC).isoformat()}}})


def events_stored(pg: LabPostgres) -> int:
    return int(pg.psql("SELECT count(*) FROM events"))


def newest_event(pg: LabPostgres) -> float:
    return float(pg.psql("SELECT extract(epoch FROM max(occurred)) FROM events"))


def checks(exporter: Exporter) -> set[str]:
    return {f.check for f in exporter.findings}


def _matches(alerts: list[dict[str, Any]], labels: dict[str, str]) -> bool:
    return any(all(a["labels"].get(k) == v for k, v in labels.items()) for a in alerts)


async def until(what: str, timeout: float, check: Callable[[], Awaitable[bool]]) -> None:
    await eventually(check, timeout, what)


async def test_services_die_silently_and_come_back(
        server: LabPrefect, own_postgres: LabPostgres, start_exporter: StartExporter,
        tmp_path: Path) -> None:
    started = time.monotonic()
    api = PrefectAPI(server.api_url)
    try:
        await api.work_pool(POOL)
        await api.interval_deployment(POOL, "every-10s", INTERVAL_SECONDS)

        async def scheduled_and_stored() -> bool:
            return await future_runs(api) >= 2 and events_stored(own_postgres) > 0

        # the scheduler made future runs; the event persister stored the setup's events
        await until("future runs and stored events", 30, scheduled_and_stored)

        # with the services running, a poll sees the scheduler's work and finds nothing wrong
        snap = await poll_once(server.api_url)
        assert snap.services is not None and snap.retention is not None
        assert snap.services.recently_scheduled_deployments == 1
        assert snap.services.deployments_without_future_runs == 0
        assert snap.services.unmarked_overdue == 0
        assert snap.retention.events_retention == RETENTION_SECONDS
        assert not snap.retention.events_overdue  # (the oldest is looked for only near the
        # cut-off: a day-old server's events are not found, nor wanted, there)
        found = {f.check for f in diagnose([snap])}
        assert not found & {*STALLED, "events_retention_lagging"}, found

        # the services die: the API is restarted without them (nothing trims events now)
        restart(server, services=False)
        stopped = time.time()
        own_postgres.psql(COPY_EVENTS_INTO_PAST)
        copied_events, copied_resources = map(int, own_postgres.psql(PAST_RETENTION).split())
        assert copied_events > 0 and copied_resources > 0
        # the future runs the scheduler left are spent, as the half minute it takes them to be
        # would leave them: no scheduler runs now to make new ones (asserted below on a poll)
        assert future_runs_left(own_postgres) >= 1
        backdate_scheduled_runs(own_postgres, LATE_AFTER_SECONDS + 2 * LATE_LOOP_SECONDS + 1)

        exporter = await start_exporter(
            prefect_api_url=server.api_url, **PREFECT_POLL,
            thresholds=[f"event_pipeline_stall_seconds={PIPELINE_STALL_SECONDS}"])
        rules = tmp_path / "rules.yml"
        rules.write_text(alerting.render_yaml(alerting.rule_groups(
            {"event_pipeline_stall_seconds": PIPELINE_STALL_SECONDS}, for_scale=FOR_SCALE)))
        prom = LabPrometheus(tmp_path / "prometheus", exporter.port, rules)
        prom.start()
        try:
            await _without_services(api, own_postgres, exporter, prom, stopped)
            restart(server, services=True)
            await _services_back(own_postgres, exporter, prom)
        finally:
            prom.stop()
    finally:
        await api.close()
    print(f"\nservices lab: {time.monotonic() - started:.0f}s")


async def _without_services(api: PrefectAPI, pg: LabPostgres,
                            exporter: Exporter, prom: LabPrometheus, stopped: float) -> None:
    async def stalled_and_lagging() -> bool:
        return {"scheduler_stalled", "late_runs_service_stalled",
                "events_retention_lagging"} <= checks(exporter)

    # the future runs were moved into the past (backdate_scheduled_runs): both at the first
    # polls, where waiting for the last of them took 20-30 s
    await until("scheduler_stalled, late_runs_service_stalled, events_retention_lagging", 90,
                stalled_and_lagging)
    assert await future_runs(api) == 0  # and no scheduler made a new one meanwhile
    s = await scrape(exporter.port)
    for check in ("scheduler_stalled", "late_runs_service_stalled", "events_retention_lagging"):
        assert s.value("prefect_pg_exporter_finding", check=check, severity="warning") == 1
    assert s.value("prefect_deployments_recently_scheduled") == 1
    assert s.value("prefect_deployments_without_future_runs") == 1
    assert s.value("prefect_overdue_unmarked_runs", work_pool=POOL) >= 1
    # the copies are 8 days old: a day past the 7-day retention
    lag = s.value("prefect_retention_lag_seconds", kind="events")
    assert 86400 - 600 < lag < 86400 + 600, lag
    assert 8 * 86400 - 600 < s.value("prefect_events_oldest_age_seconds") < 8 * 86400 + 600

    # a run starts more than a minute after the newest event, and no event says so. Rather than
    # wait out the rest of that minute (half a minute of the test), the stored events are moved
    # back by what is left of it, as the copies above are moved 8 days: the exporter reads only
    # their `occurred`, and with no services nothing stores a newer one (asserted below, on
    # `received`, which is left as it was)
    newest = newest_event(pg)
    backdate_events(pg, max(0.0, newest + 65 - time.time()))
    run = await api.create_flow_run(await api.flow("flow-every-10s"), "started-unseen")
    await api.set_state(run, "RUNNING")

    async def pipeline_stalled() -> bool:
        return set(STALLED) <= checks(exporter)

    await until("event_pipeline_stalled", 30, pipeline_stalled)
    assert events_received_since(pg, stopped) == 0

    async def all_firing() -> bool:
        firing = await prom.firing()
        return all(_matches(firing.get(name, []), labels) for name, labels in EXPECTED.items())

    try:
        # the longest `for:` is PrefectRetentionLagging's, 30 min scaled to 15 s
        await until("each finding's alert firing", 60, all_firing)
    except AssertionError:
        firing = await prom.firing()
        raise AssertionError(f"firing: {sorted(firing)}; expected {sorted(EXPECTED)}") from None


async def _services_back(pg: LabPostgres, exporter: Exporter, prom: LabPrometheus) -> None:
    async def cleared() -> bool:
        s = await scrape(exporter.port)
        return (not set(STALLED) & checks(exporter)
                and s.value("prefect_deployments_without_future_runs") == 0
                and sum(s.values("prefect_overdue_unmarked_runs")) == 0)

    # the scheduler tops up at once, late_runs marks the overdue runs Late within a second or
    # two, and their Late events are stored again
    await until("the stalled findings to clear", 60, cleared)

    async def resolved() -> bool:
        firing = await prom.firing()
        return not any(_matches(firing.get(name, []), EXPECTED[name])
                       for name in ("PrefectSchedulerStalled", "PrefectLateRunsServiceStalled",
                                    "PrefectEventPipelineStalled"))

    await until("the services' alerts to resolve", 30, resolved)

    # db_vacuum (hourly, and once as the services start) deletes what is past retention: the
    # copies were real overdue rows to Prefect too. (The exporter reads retention every 5 min.)
    async def vacuumed() -> bool:
        return pg.psql(PAST_RETENTION) == "0 0"

    await until("Prefect's db_vacuum to delete the copies", 60, vacuumed)


def backdate_events(pg: LabPostgres, seconds: float) -> None:
    """Every event of the last day (not the 8-day-old copies), and its resources, `seconds`
    older."""
    shift = f"interval '{seconds:.3f} seconds'"
    recent = "occurred > now() - interval '1 day'"
    pg.psql(f"UPDATE events SET occurred = occurred - {shift} WHERE {recent}")
    pg.psql(f"UPDATE event_resources SET occurred = occurred - {shift} WHERE {recent}")
    assert newest_event(pg) < time.time() - 60


def future_runs_left(pg: LabPostgres) -> int:
    return int(pg.psql("SELECT count(*) FROM flow_run WHERE state_type = 'SCHEDULED' "
                       "AND expected_start_time > now()"))


def backdate_scheduled_runs(pg: LabPostgres, overdue_seconds: float) -> None:
    """Every SCHEDULED run moved back so that the latest starts `overdue_seconds` ago: what
    waiting out the scheduler's horizon (20 s ahead, and the late_runs grace) would do. Both
    columns the API filters on: expected_start_time (future runs, the backlog) and
    next_scheduled_start_time (what late_runs, and the exporter's unmarked count, key on)."""
    shift = ("(SELECT greatest(max(expected_start_time) - now(), interval '0') "
             f"+ interval '{overdue_seconds:.3f} seconds' FROM flow_run "
             "WHERE state_type = 'SCHEDULED')")
    pg.psql(f"UPDATE flow_run SET expected_start_time = expected_start_time - {shift}, "
            f"next_scheduled_start_time = next_scheduled_start_time - {shift} "
            "WHERE state_type = 'SCHEDULED'")
    assert future_runs_left(pg) == 0


def events_received_since(pg: LabPostgres, since: float) -> int:
    return int(pg.psql(f"SELECT count(*) FROM events WHERE received > to_timestamp({since})"))
