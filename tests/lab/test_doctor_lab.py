"""`prefect-pg-exporter doctor` on the lab: it names the root cause, and a healthy stack is 0."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import incidents
from lab.pgbouncer import LabPgBouncer, start_pgbouncer
from lab.postgres import LabPostgres, start_postgres
from lab.prefect import start_prefect
from tests.helpers import StartExporter, eventually, scrape

pytestmark = pytest.mark.lab


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", *args], capture_output=True, text=True,
        timeout=60, env={"PATH": os.environ["PATH"],
                         "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "5", **env})


async def test_doctor_names_the_idle_in_transaction_root_blocker(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, start_exporter: StartExporter) -> None:
    async with incidents.lock_chain(postgres, table="scratch.doctor", writers=2,
                                    app="doctor") as chain:
        holder_pid = chain.holder_pid
        # a wait under the default 60 s: a warning, as the pager sees it
        done = await asyncio.to_thread(doctor, PREFECT_PG_EXPORTER_POSTGRES_DSN=postgres.dsn())
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"[WARNING] pid {holder_pid} blocks 2 session(s)" in done.stdout
        # the thresholds the rules were generated with, given to the doctor: it pages too
        await incidents.wait_until(  # until both writers have waited past those 0.5 s
            postgres, "SELECT count(*) = 2 FROM pg_stat_activity WHERE pid = ANY($1) "
            "AND wait_event_type = 'Lock' AND now() - state_change > interval '0.6 s'",
            chain.writer_pids)
        done = await asyncio.to_thread(doctor, "--format", "json", "--set",
                                       "blocked_wait_critical_seconds=0.5",
                                       PREFECT_PG_EXPORTER_POSTGRES_DSN=postgres.monitor_dsn(),
                                       PREFECT_PG_EXPORTER_PGBOUNCER_DSN=pgbouncer.stats_dsn())
        report = json.loads(done.stdout)
        assert done.returncode == 2, done.stdout + done.stderr
        chain_findings = [f for f in report["findings"] if f["check"] == "lock_chain"]
        assert len(chain_findings) == 1
        assert chain_findings[0]["severity"] == "critical"
        assert chain_findings[0]["title"] == (f"pid {holder_pid} blocks 2 session(s) while idle "
                                              "in transaction")
        assert "doctor-holder" in chain_findings[0]["evidence"][0]
        assert f"pg_terminate_backend({holder_pid})" in chain_findings[0]["action"]
        assert report["findings"][0]["severity"] == "critical"  # ranked

        # the running exporter, with the same thresholds (environment), exports the same finding
        exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn(),
                                         thresholds=["blocked_wait_critical_seconds=0.5"])

        async def finding_exported() -> bool:
            s = await scrape(exporter.port)
            return s.value("prefect_pg_exporter_finding", check="lock_chain",
                           severity="critical") == 1

        await eventually(finding_exported, what="the lock_chain finding exported")
        assert f"pid {holder_pid} blocks" in " ".join(f.title for f in exporter.findings)
        await chain.end()

        async def finding_gone() -> bool:
            s = await scrape(exporter.port)
            return not s.values("prefect_pg_exporter_finding", check="lock_chain")

        await eventually(finding_gone, what="the finding to go once the blocker is gone")


def test_doctor_exits_0_on_a_healthy_stack(lab_dir: Path,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """PostgreSQL with its safety nets set, PgBouncer in transaction pooling, Prefect with its
    statement caches off, nothing stuck: nothing to report."""
    root = lab_dir / tmp_path_factory.mktemp("healthy").name
    pg = start_postgres(root / "pg", extra_settings={
        "idle_in_transaction_session_timeout": "'5min'", "statement_timeout": "'5min'"})
    bouncer = start_pgbouncer(root / "pgb", pg)
    prefect = start_prefect(root / "prefect", bouncer, services=False)
    try:
        done = doctor(PREFECT_PG_EXPORTER_POSTGRES_DSN=pg.monitor_dsn(),
                      PREFECT_PG_EXPORTER_PGBOUNCER_DSN=bouncer.stats_dsn(),
                      PREFECT_PG_EXPORTER_PREFECT_API_URL=prefect.api_url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("No findings")
        # and a target that is down is a warning, as PrefectPgExporterSourceDown
        prefect.stop()
        done = doctor(PREFECT_PG_EXPORTER_POSTGRES_DSN=pg.monitor_dsn(),
                      PREFECT_PG_EXPORTER_PREFECT_API_URL=prefect.api_url)
        assert done.returncode == 1
        assert f"[WARNING] cannot read prefect 127.0.0.1:{prefect.port}" in done.stdout
    finally:
        prefect.stop()
        bouncer.stop()
        pg.stop()
