"""Incidents recorded with their evidence, against a real PostgreSQL 15 (and PgBouncer): the lock
chain begins and ends once in the log with who, which table and what statements (masked), is
still listed on /incidents when the holder is gone, and a password literal never shows."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from exporter.app import Exporter
from lab import incidents
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from tests.helpers import StartExporter, eventually, scrape, wait_for_value

pytestmark = pytest.mark.lab

TABLE = "scratch.incident_rows"


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The exporter's structlog events, as they are logged."""
    with capture_logs() as captured:
        yield captured


def events(logs: list[MutableMapping[str, Any]], incident: int | None = None,
           **match: Any) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if str(e.get("event", "")).startswith("incident ")
            and (incident is None or e.get("incident") == incident)
            and all(e.get(k) == v for k, v in match.items())]


async def logged(logs: list[MutableMapping[str, Any]], what: str, incident: int | None = None,
                 **match: Any) -> MutableMapping[str, Any]:
    """The one incident event that matches, once it is logged."""
    async def there() -> bool:
        return bool(events(logs, incident, **match))

    await eventually(there, what=what)
    (event,) = events(logs, incident, **match)
    return event


async def get(exporter: Exporter, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{exporter.port}{path}", timeout=5)
    response.raise_for_status()
    return response


async def test_a_lock_chain_is_one_incident_with_who_what_and_which_table(
        postgres: LabPostgres, start_exporter: StartExporter,
        logs: list[MutableMapping[str, Any]]) -> None:
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn())
    async with incidents.lock_chain(postgres, table=TABLE, app="inc") as chain:
        begin = await logged(logs, "the incident's begin event", event="incident begin",
                             pid=chain.holder_pid)
        assert begin["kind"] == "lock_chain" and begin["log_level"] == "warning"
        assert begin["application_name"] == "inc-holder"
        assert begin["usename"] == "postgres" and begin["client_addr"] == "127.0.0.1"
        assert begin["state"] == "idle in transaction"
        assert begin["relation"] == TABLE
        assert begin["blocked_pids"] == chain.writer_pids
        # the statements of both sessions, every literal masked
        assert begin["statement"] == f"BEGIN; UPDATE {TABLE} SET state = ? WHERE id = ?"
        assert begin["blocked_statements"] == [f"UPDATE {TABLE} SET state = ? WHERE id = ?"]
        assert begin["title"] == (f"pid {chain.holder_pid} blocks 1 session(s) while idle in "
                                  f"transaction on {TABLE}")
        # the waited-on table, as a bounded label
        s = await wait_for_value(exporter.port, "postgres_blocked_sessions_by_relation",
                                 {"schema": "scratch", "table": "incident_rows"}, 1)
        assert s.value("postgres_blocked_sessions") == 1
        incident = begin["incident"]

        async def seen_again() -> bool:
            """A later poll saw the chain too. A snapshot is stamped when its read ends: the
            chain's poll reads more (its sessions, its locks) than the next, so the next poll,
            once the chain is gone, may be stamped a few hundredths of a second after it, a
            duration that rounds to 0.0 (it did, in a CI run)."""
            listed = (await get(exporter, "/incidents")).json()["incidents"]
            return any(i["id"] == incident and i["duration_seconds"] > 0 for i in listed)

        await eventually(seen_again, 30, "a second sighting of the chain")
        await chain.end()
    # the holder is gone (its session terminated): the incident ends, once

    end = await logged(logs, "the incident's end event", incident, event="incident end")
    # the table stays even when the last poll caught the writer between its activity read and
    # its lock read (blocked, on no table yet): the record keeps what that occurrence showed
    assert end["pid"] == chain.holder_pid and end["relation"] == TABLE
    assert end["end_reason"] == "resolved" and end["duration_seconds"] > 0
    assert [e["event"] for e in events(logs, incident)] == ["incident begin", "incident end"]

    listed = [i for i in (await get(exporter, "/incidents")).json()["incidents"]
              if i["id"] == incident]
    assert listed and listed[0]["status"] == "ended"
    assert listed[0]["evidence"]["pid"] == chain.holder_pid
    assert listed[0]["evidence"]["blocked_statements"] == end["blocked_statements"]
    page = (await get(exporter, "/")).text
    assert f"pid {chain.holder_pid} blocks 1 session(s)" in page and TABLE in page
    s = await scrape(exporter.port)
    assert s.values("postgres_blocked_sessions_by_relation") == []


async def test_a_password_literal_never_shows(postgres: LabPostgres,
                                              start_exporter: StartExporter,
                                              logs: list[MutableMapping[str, Any]]) -> None:
    """An idle-in-transaction session whose last statement is ALTER ROLE ... PASSWORD '...',
    and a blocked session running another: the statements are shown, the literals nowhere:
    not in the log, /incidents, the landing page or the metrics."""
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn())
    async with incidents.password_chain(postgres, app="pw") as chain:
        begin = await logged(logs, "the incident's begin event", event="incident begin",
                             pid=chain.holder_pid)
        assert begin["statement"] == f"BEGIN; ALTER ROLE {chain.role} PASSWORD ?"
        assert begin["blocked_statements"] == [f"ALTER ROLE {chain.role} PASSWORD ?"]
        assert begin["relation"] == "pg_catalog.pg_authid"
        seen = [json.dumps(logs, default=str), (await get(exporter, "/incidents")).text,
                (await get(exporter, "/")).text, (await scrape(exporter.port)).text]
    seen += [json.dumps(logs, default=str), (await get(exporter, "/incidents")).text,
             (await get(exporter, "/")).text]
    for text in seen:
        for secret in chain.secrets:
            assert secret not in text


async def test_no_statements_reads_no_query_text(postgres: LabPostgres,
                                                 start_exporter: StartExporter,
                                                 logs: list[MutableMapping[str, Any]]) -> None:
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn(), no_statements="true")
    async with incidents.password_chain(postgres, app="nostmt") as chain:
        begin = await logged(logs, "the incident's begin event", event="incident begin",
                             pid=chain.holder_pid)
        assert "statement" not in begin and "blocked_statements" not in begin
        assert begin["relation"] == "pg_catalog.pg_authid"
        body = (await get(exporter, "/incidents")).json()
    assert body["statements"] is False


async def test_a_client_silent_inside_its_transaction(postgres: LabPostgres,
                                                      start_exporter: StartExporter,
                                                      logs: list[MutableMapping[str, Any]]) -> None:
    """A COPY whose client never sends: an incident once past the doctor's threshold."""
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn(),
                                     thresholds=["client_read_stall_critical_seconds=0.5"])
    async with incidents.copy_stall(postgres, table=TABLE, app="stall") as stall:
        begin = await logged(logs, "the stall's begin event", event="incident begin",
                             kind="client_read_stall", pid=stall.pid)
        assert begin["application_name"] == "stall" and begin["state"] == "active"
        # past the 0.5 s threshold when read; evidence is rounded to 0.1 s, so 0.54 s shows 0.5
        assert begin["state_age_seconds"] >= 0.5 and begin["severity"] == "critical"
        assert begin["statement"].startswith("COPY ")
        assert any(f.check == "client_read_stall" for f in exporter.findings)
    incident = begin["incident"]

    await logged(logs, "the stall's end event", incident, event="incident end")


async def test_a_pgbouncer_pool_with_waiting_clients(postgres: LabPostgres,
                                                     pgbouncer: LabPgBouncer,
                                                     start_exporter: StartExporter,
                                                     logs: list[MutableMapping[str, Any]]) -> None:
    await start_exporter(pgbouncer_dsn=pgbouncer.stats_dsn())
    async with incidents.pool_exhaustion(postgres, pgbouncer, clients=pgbouncer.pool_size + 2,
                                         seconds=60):
        async def two_waiting() -> bool:
            return any(e.get("waiting_clients", 0) >= 2
                       for e in events(logs, kind="pgbouncer_pool_waiting"))

        await eventually(two_waiting, what="the pool's incident with 2 clients waiting")
        begin = events(logs, event="incident begin", kind="pgbouncer_pool_waiting")[0]
        assert begin["pool"] == "prefect/postgres"
        assert begin["pool_size"] == pgbouncer.pool_size
    incident = begin["incident"]

    await logged(logs, "the pool's end event", incident, event="incident end")
