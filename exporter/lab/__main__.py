"""The demo: the lab on loopback and the exporter against it, until Ctrl-C.

    scripts/demo                 # PostgreSQL, PgBouncer, Prefect, the exporter, Prometheus
                                 # with the shipped rules, and a few incidents
    scripts/demo --no-incidents  # a quiet lab
    scripts/demo --no-prefect    # without the Prefect server (quicker on a first run)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
from datetime import timedelta
from pathlib import Path

import asyncpg

from exporter.app import Exporter
from exporter.config import load
from exporter.lab.common import lab_root
from exporter.lab.pgbouncer import LabPgBouncer, start_pgbouncer
from exporter.lab.postgres import LabPostgres, start_postgres
from exporter.lab.prefect import LabPrefect, start_prefect
from exporter.lab.prefect_api import PrefectAPI
from exporter.lab.prometheus import LabPrometheus
from exporter.logs import configure

DEFAULT_PORT = 9816
INCIDENTS = ("  incidents  an idle-in-transaction blocker with a writer behind it, two LISTEN "
             "sessions,\n             PgBouncer clients waiting for a server connection, "
             "overdue runs in work pool demo-pool\n             (Late after 15 s, no worker)")
RULES = Path(__file__).resolve().parents[2] / "alerts" / "prefect-pg-exporter.rules.yml"


async def _late_runs(prefect: LabPrefect) -> None:
    api = PrefectAPI(prefect.api_url)
    try:
        await api.work_pool("demo-pool")
        deployment = await api.deployment("demo-pool", "demo-nightly")
        for minutes in (5, 10, 30):
            await api.scheduled_run(deployment, timedelta(minutes=-minutes))
        await api.scheduled_run(deployment, timedelta(minutes=20))
    finally:
        await api.close()


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _ignore_result(task: asyncio.Task[object]) -> None:
    """These statements end when the demo drops its connections; their error is expected."""
    task.cancelled() or task.exception()


async def _incidents(pg: LabPostgres, bouncer: LabPgBouncer) -> list[asyncpg.Connection]:
    """An idle-in-transaction holder with a writer blocked behind it, two LISTENers, and more
    clients on PgBouncer than its pool has server connections."""
    pg.psql("CREATE TABLE IF NOT EXISTS scratch.task_run (id int PRIMARY KEY, state text)")
    pg.psql("INSERT INTO scratch.task_run VALUES (1, 'RUNNING') ON CONFLICT DO NOTHING")
    holder, writer, services_a, services_b = [
        await asyncpg.connect(pg.dsn(), server_settings={"application_name": app})
        for app in ("demo-holder", "demo-writer", "prefect-services", "prefect-services")]
    await holder.execute("BEGIN; UPDATE scratch.task_run SET state = 'X' WHERE id = 1")
    loop = asyncio.get_running_loop()
    loop.create_task(writer.execute("UPDATE scratch.task_run SET state = 'Y' WHERE id = 1")
                     ).add_done_callback(_ignore_result)
    for conn in (services_a, services_b):
        await conn.add_listener("prefect_automation_changes", lambda *_: None)
    pooled = [await asyncpg.connect(bouncer.dsn(), statement_cache_size=0)
              for _ in range(bouncer.pool_size + 3)]
    for conn in pooled:
        loop.create_task(conn.execute("SELECT pg_sleep(3600)")).add_done_callback(_ignore_result)
    return [holder, writer, services_a, services_b, *pooled]


async def demo(incidents: bool, port: int, with_prefect: bool, with_prometheus: bool) -> None:
    root = lab_root("prefect-pg-demo-")
    pg = start_postgres(root / "postgres")
    bouncer = start_pgbouncer(root / "pgbouncer", pg)
    prefect = start_prefect(root / "prefect", bouncer) if with_prefect else None
    conns: list[asyncpg.Connection] = []
    settings = {"postgres_dsn": pg.monitor_dsn(), "pgbouncer_dsn": bouncer.stats_dsn(),
                "listen_address": f"127.0.0.1:{_port(port)}", "poll_interval_seconds": "5",
                "poll_timeout_seconds": "4", "log_format": "console"}
    if prefect is not None:
        settings["prefect_api_url"] = prefect.api_url
    exporter = Exporter(load(settings, environ={}))
    prometheus: LabPrometheus | None = None
    try:
        if incidents:
            conns = await _incidents(pg, bouncer)
            if prefect is not None:
                await _late_runs(prefect)
        await exporter.start()
        if with_prometheus:
            prometheus = LabPrometheus(root / "prometheus", exporter.port, RULES, 5.0)
            prometheus.start()
        url = f"http://127.0.0.1:{exporter.port}/"
        print(f"\nprefect-pg-exporter demo is running\n"
              f"  exporter   {url}   (metrics: {url}metrics; findings on the page, or: "
              f"prefect-pg-exporter doctor with the DSNs below)\n"
              + (f"  prometheus {prometheus.url}/alerts   (the shipped rules; pages after "
                 f"their `for:`, minutes)\n" if prometheus else "")
              + (f"  prefect    {prefect.api_url}   (3.8.8, its database through PgBouncer)\n"
                 if prefect else "")
              + f"  postgres   psql '{pg.dsn()}'\n"
              f"  monitoring role (pg_monitor only): {pg.monitor_dsn()}\n"
              f"  pgbouncer  psql '{bouncer.dsn()}'   (transaction pooling, "
              f"pool size {bouncer.pool_size})\n"
              f"  admin console (stats_users): psql '{bouncer.stats_dsn()}'\n"
              f"{INCIDENTS if incidents else ''}\n"
              f"Ctrl-C stops it and removes {root}\n", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if prometheus is not None:
            prometheus.stop()
        await exporter.stop()
        for conn in conns:
            conn.terminate()
        if prefect is not None:
            prefect.stop()
        bouncer.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-incidents", action="store_true", help="a quiet lab")
    parser.add_argument("--no-prefect", action="store_true", help="no Prefect server")
    parser.add_argument("--no-prometheus", action="store_true", help="no Prometheus")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="exporter port (a free one if taken)")
    args = parser.parse_args()
    configure("info", "console")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(demo(not args.no_incidents, args.port, not args.no_prefect,
                         not args.no_prometheus))


if __name__ == "__main__":
    main()
