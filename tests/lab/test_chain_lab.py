"""One causal chain across the layers (#27), live: the doctor follows a waiting PgBouncer pool
and a hanging Prefect API down to the PostgreSQL session that causes them, within one poll."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter import alerting
from exporter.thresholds import parse_overrides
from lab import incidents
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.prometheus import LabPrometheus
from tests.helpers import PREFECT_POLL, StartExporter, eventually, wait_for

pytestmark = pytest.mark.lab


def doctor_json(**env: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", "--format", "json"], capture_output=True,
        text=True, timeout=90, env={"PATH": os.environ["PATH"],
                                    "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "5", **env})
    assert done.returncode in (1, 2), done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def doctor_text(**env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "doctor"], capture_output=True, text=True,
        timeout=90, env={"PATH": os.environ["PATH"],
                         "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "5", **env})
    assert done.returncode in (1, 2), done.stdout + done.stderr
    return done.stdout


def findings(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["check"] == check]


async def test_a_waiting_pool_names_the_backend_that_holds_it(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, start_exporter: StartExporter) -> None:
    """Transaction pooling, pool 5: a client idles in its transaction holding a row lock, 4
    writers block behind it, 3 more clients wait in PgBouncer. One doctor poll names the
    holder's backend pid as the pool's cause."""
    assert pgbouncer.pool_size == 5
    async with incidents.pooled_lock_chain(postgres, pgbouncer, writers=4, waiting=3,
                                           app="chain") as chain:
        report = await asyncio.to_thread(
            doctor_json, PREFECT_PG_EXPORTER_POSTGRES_DSN="pg=" + postgres.monitor_dsn(),
            PREFECT_PG_EXPORTER_PGBOUNCER_DSN="pgb=" + pgbouncer.stats_dsn())
        (pool,) = [f for f in findings(report, "pgbouncer_pool_waiting")
                   if "pool prefect/postgres" in f["title"]]
        assert pool["cause"]["pid"] == chain.holder_pid
        assert pool["cause"]["application_name"] == "chain-holder"
        assert pool["cause"]["relation"] == "scratch.pooled"
        assert pool["title"] == (f"3 client(s) wait for a server connection in pool "
                                 f"prefect/postgres: pid {chain.holder_pid} holds it")
        joined = pool["evidence"][1]
        assert joined.startswith("3 client(s) wait; the pool's 5 server connection(s) on "
                                 "PostgreSQL pg are 1 idle in transaction (pid "
                                 f"{chain.holder_pid}, chain-holder, ")
        assert joined.endswith(f"and 4 waiting on a lock behind pid {chain.holder_pid}: pid "
                               f"{chain.holder_pid} is the cause")
        # the lock chain on PostgreSQL names the same session
        (lock,) = findings(report, "lock_chain")
        assert lock["cause"]["pid"] == chain.holder_pid
        # and the report starts with it, once, with what it causes on both layers
        text = await asyncio.to_thread(
            doctor_text, PREFECT_PG_EXPORTER_POSTGRES_DSN="pg=" + postgres.monitor_dsn(),
            PREFECT_PG_EXPORTER_PGBOUNCER_DSN="pgb=" + pgbouncer.stats_dsn())
        head = text.split("\n\n")[0].splitlines()
        assert head[0] == "Root causes (each once, with what it causes):"
        assert head[1].startswith(f"R1. [WARNING] pid {chain.holder_pid} (chain-holder, idle "
                                  "in transaction, transaction ")
        assert {line.rsplit("(", 1)[1] for line in head if "causes: " in line} >= {
            "lock_chain, pg)", "pgbouncer_pool_waiting, pgb)"}
        assert text.count(f"R1. [WARNING] pid {chain.holder_pid}") == 1

        # the running exporter exports the pool's server connections by their backend's state
        exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn(),
                                         pgbouncer_dsn=pgbouncer.stats_dsn())
        labels = {"database": "prefect", "user": "postgres"}
        await wait_for(exporter.port, lambda s: s.find(
            "pgbouncer_pools_server_backend_connections", pg_state="waiting_on_lock",
            **labels) == 4 and s.find("pgbouncer_pools_server_backend_connections",
                                      pg_state="idle_in_transaction", **labels) == 1,
            "the pool's server connections by their backend's state", timeout=30)

        # its incident records the chain as evidence
        async def incident_names_the_holder() -> bool:
            async with httpx.AsyncClient() as client:
                body = (await client.get(f"http://127.0.0.1:{exporter.port}/incidents",
                                         timeout=5)).json()
            return any(i["kind"] == "pgbouncer_pool_waiting"
                       and i["evidence"].get("cause_pid") == chain.holder_pid
                       and i["evidence"].get("server_backends") ==
                       "1 idle_in_transaction, 4 waiting_on_lock"
                       for i in body["incidents"])

        await eventually(incident_names_the_holder, 30, "the pool's incident names the holder")


async def test_a_hanging_prefect_api_names_the_session_that_locks_its_table(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, prefect: LabPrefect,
        start_exporter: StartExporter, tmp_path: Path) -> None:
    """A session holds ACCESS EXCLUSIVE on flow_run, idle in its transaction, while clients
    call /flow_runs/filter: one doctor poll names that pid on the Prefect target; the running
    exporter exports the verdict its alerts read (a real Prometheus fires both
    PrefectDatabaseBlocked alerts, then resolves them) and keeps the incident, with that pid,
    after the lock is gone."""
    with contextlib.ExitStack() as stack:
        async with incidents.table_lock(postgres, table="public.flow_run") as lock, \
                httpx.AsyncClient(base_url=prefect.api_url + "/", timeout=60) as client:
            calls = [incidents.background(client.post("flow_runs/filter", json={"limit": 1}))
                     for _ in range(4)]
            await incidents.wait_until(
                postgres, "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'", "prefect-server")
            report = await asyncio.to_thread(
                doctor_json, PREFECT_PG_EXPORTER_POSTGRES_DSN="pg=" + postgres.monitor_dsn(),
                PREFECT_PG_EXPORTER_PGBOUNCER_DSN="pgb=" + pgbouncer.stats_dsn(),
                PREFECT_PG_EXPORTER_PREFECT_API_URL="prefect=" + prefect.api_url)
            # the PostgreSQL poll is not stuck behind the lock (it sizes flow_run without it)
            assert not [f for f in findings(report, "source_down") if f["target"] == "pg"], \
                json.dumps(report["findings"], indent=1)
            blocked = [f for f in findings(report, "prefect_database_blocked")
                       if f["target"] == "prefect"]
            assert blocked, json.dumps(report["findings"], indent=1)
            assert blocked[0]["cause"]["pid"] == lock.pid
            assert blocked[0]["cause"]["application_name"] == "incident-locker"
            assert blocked[0]["cause"]["relation"] == "public.flow_run"
            assert f"pid {lock.pid}" in blocked[0]["title"]

            exporter = await start_exporter(
                postgres_dsn="pg=" + postgres.monitor_dsn(),
                pgbouncer_dsn="pgb=" + pgbouncer.stats_dsn(),
                prefect_api_url="prefect=" + prefect.api_url, **PREFECT_POLL,
                thresholds=[CRITICAL_AFTER_1S])
            await wait_for(exporter.port, lambda s: sum(s.values(
                "prefect_database_blocked_roots", target="prefect")) == 1,
                "the verdict the PrefectDatabaseBlocked alerts read", timeout=30)
            rules = tmp_path / "rules.yml"
            # the same thresholds as the exporter (the verdict is the exporter's)
            rules.write_text(alerting.render_yaml(alerting.rule_groups(
                parse_overrides([CRITICAL_AFTER_1S]), for_scale=1 / 60)))
            prom = LabPrometheus(tmp_path / "prometheus", exporter.port, rules)
            prom.start()
            stack.callback(prom.stop)
            await eventually(lambda: alerts_firing(prom, BLOCKED_ALERTS), 60,
                             "both PrefectDatabaseBlocked alerts firing")
            held_by = await incident(exporter.port, "active")
            assert held_by["evidence"]["pid"] == lock.pid
            assert held_by["evidence"]["application_name"] == "incident-locker"
            assert held_by["evidence"]["relation"] == "public.flow_run"
            for call in calls:
                call.cancel()
        # the lock is gone: the verdict falls back to 0, the incident ends and keeps its evidence
        await wait_for(exporter.port, lambda s: sum(s.values(
            "prefect_database_blocked_roots", target="prefect")) == 0,
            "no root once the lock is released", timeout=60)
        await eventually(lambda: alerts_firing(prom, set()), 60, "the alerts resolved")
        ended = await incident(exporter.port, "ended", timeout=90)
        assert (ended["id"], ended["evidence"]["pid"]) == (held_by["id"], lock.pid)


CRITICAL_AFTER_1S = "blocked_wait_critical_seconds=1"
BLOCKED_ALERTS = {"PrefectDatabaseBlocked", "PrefectDatabaseBlockedCritical"}


async def alerts_firing(prom: LabPrometheus, expected: set[str]) -> bool:
    """Exactly these of the PrefectDatabaseBlocked alerts fire, on the Prefect target."""
    firing = await prom.firing()
    return {name for name in BLOCKED_ALERTS
            if any(a["labels"].get("target") == "prefect" for a in firing.get(name, []))
            } == expected


async def incident(port: int, status: str, timeout: float = 30) -> dict[str, Any]:
    """The prefect_database_blocked incident on /incidents once it has that status."""
    found: list[dict[str, Any]] = []

    async def listed() -> bool:
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"http://127.0.0.1:{port}/incidents", timeout=5)).json()
        found[:] = [i for i in body["incidents"] if i["kind"] == "prefect_database_blocked"
                    and i["target"] == "prefect" and i["status"] == status]
        return bool(found)

    await eventually(listed, timeout, f"a prefect_database_blocked incident {status}")
    return found[0]
