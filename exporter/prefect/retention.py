"""Which of Prefect's retention settings keeps each big table bounded, by release, read from
Prefect's own source (the services that delete rows):

- 2.20: the event persister trims `events` older than PREFECT_EVENTS_RETENTION_PERIOD (where
  events are on); nothing deletes `event_resources`, flow runs, task runs, logs or artifacts.
- 3.0 to 3.6.20: the event persister trims `events` and `event_resources` by
  server.events.retention_period; nothing deletes flow runs and what hangs off them.
- 3.6.19+ (the server has `server.services.db_vacuum`): db_vacuum deletes events and
  event_resources by server.events.retention_period where its `enabled` holds "events", and
  flow runs that ended before server.services.db_vacuum.retention_period with their task runs
  (ON DELETE CASCADE), logs and artifacts (by flow_run_id) where it holds "flow_runs".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from exporter.prefect.settings import DEFAULTS, EVENTS_RETENTION, RUNS_RETENTION
from exporter.prefect.snapshot import PrefectSnapshot

RUN_TABLES = ("flow_run", "task_run", "log", "artifact")
EVENT_TABLES = ("events", "event_resources")


class Keep(NamedTuple):
    seconds: float  # rows older than this should be gone
    by: str  # what deletes them, as the doctor says it


def table_retention(version: str, settings: Mapping[str, float],
                    vacuum: frozenset[str] | None) -> dict[str, Keep]:
    """The retention of each table some Prefect service keeps bounded on this server; a table
    missing from the answer is never cleaned up by Prefect."""
    events = Keep(settings.get(EVENTS_RETENTION, DEFAULTS[EVENTS_RETENTION]),
                  "db_vacuum (server.events.retention_period)" if vacuum is not None
                  else "the event persister (server.events.retention_period)")
    kept: dict[str, Keep] = {}
    if vacuum is None or "events" in vacuum:
        kept["events"] = events
        if not version.startswith("2."):
            kept["event_resources"] = events
    runs = settings.get(RUNS_RETENTION)
    if vacuum is not None and "flow_runs" in vacuum and runs:
        kept.update(dict.fromkeys(RUN_TABLES, Keep(
            runs, "db_vacuum (server.services.db_vacuum.retention_period)")))
    return kept


def retention_of(pf: PrefectSnapshot) -> dict[str, Keep]:
    return table_retention(pf.version, pf.settings, pf.vacuum_kinds)


def how_to_clean(table: str, pf: PrefectSnapshot | None, column: str) -> str:
    """What to do, for that server's release, about old rows of a table."""
    by_hand = (f"Delete in batches, off-peak: DELETE FROM {table} WHERE ctid IN (SELECT ctid "
               f"FROM {table} WHERE \"{column}\" < now() - interval '30 days' LIMIT 10000); "
               "repeated until it deletes nothing, then VACUUM (ANALYZE) " + table + ";")
    if pf is None:
        return ("Configure the Prefect API target so the doctor knows the server's retention "
                "settings. " + by_hand)
    vacuum = pf.vacuum_kinds
    if table in EVENT_TABLES:
        if pf.version.startswith("2."):
            return ("Prefect 2.x never deletes event_resources (and events only where the "
                    "event persister runs): upgrade to 3.x, meanwhile " + by_hand)
        return ("server.events.retention_period applies: check that the background services "
                "(the event persister before 3.6.21, db_vacuum since) run and keep up; "
                "their logs say what they delete.")
    if vacuum is None:
        return (f"Prefect {pf.version or 'of this release'} has no retention for flow runs "
                "and what hangs off them (db_vacuum came in 3.6.19): upgrade, or " + by_hand
                + " Deleting flow_run rows deletes their task runs (ON DELETE CASCADE), not "
                  "their logs or artifacts.")
    if "flow_runs" not in vacuum:
        return ("Turn on db_vacuum for flow runs: PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED="
                "'[\"events\", \"flow_runs\"]' and PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_"
                "PERIOD (e.g. 30 days): it deletes flow runs that ended before it with their "
                "task runs, logs and artifacts, in batches.")
    return ("db_vacuum deletes them but is behind: check that the background services run "
            "(`prefect server services ls`) and db_vacuum's logs; logs and artifacts of no "
            "flow run are its \"orphans\" task.")
