"""The demo: the lab on loopback and the exporter against it, until Ctrl-C.

    scripts/demo                 # PostgreSQL, PgBouncer, the exporter, and a few incidents
    scripts/demo --no-incidents  # a quiet lab
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket

import asyncpg

from exporter.app import Exporter
from exporter.config import load
from exporter.lab.common import lab_root
from exporter.lab.pgbouncer import LabPgBouncer, start_pgbouncer
from exporter.lab.postgres import LabPostgres, start_postgres
from exporter.logs import configure

DEFAULT_PORT = 9816
INCIDENTS = ("  incidents  an idle-in-transaction blocker with a writer behind it, two LISTEN "
             "sessions,\n             PgBouncer clients waiting for a server connection")


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


async def demo(incidents: bool, port: int) -> None:
    root = lab_root("prefect-pg-demo-")
    pg = start_postgres(root / "postgres")
    bouncer = start_pgbouncer(root / "pgbouncer", pg)
    conns: list[asyncpg.Connection] = []
    exporter = Exporter(load({"postgres_dsn": pg.monitor_dsn(),
                              "pgbouncer_dsn": bouncer.stats_dsn(),
                              "listen_address": f"127.0.0.1:{_port(port)}",
                              "poll_interval_seconds": "5", "poll_timeout_seconds": "4",
                              "log_format": "console"}, environ={}))
    try:
        if incidents:
            conns = await _incidents(pg, bouncer)
        await exporter.start()
        url = f"http://127.0.0.1:{exporter.port}/"
        print(f"\nprefect-pg-exporter demo is running\n"
              f"  exporter   {url}   (metrics: {url}metrics)\n"
              f"  postgres   psql '{pg.dsn()}'\n"
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
        await exporter.stop()
        for conn in conns:
            conn.terminate()
        bouncer.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-incidents", action="store_true", help="a quiet lab")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="exporter port (a free one if taken)")
    args = parser.parse_args()
    configure("info", "console")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(demo(not args.no_incidents, args.port))


if __name__ == "__main__":
    main()
