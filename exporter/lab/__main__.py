"""The demo: the lab on loopback and the exporter against it, until Ctrl-C.

    scripts/demo                 # PostgreSQL + exporter, with a few incidents reproduced
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
from exporter.lab.postgres import LabPostgres, start_postgres
from exporter.logs import configure

DEFAULT_PORT = 9816
INCIDENTS = "  incidents  an idle-in-transaction blocker, a writer behind it, two LISTEN sessions"


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


async def _incidents(pg: LabPostgres) -> list[asyncpg.Connection]:
    """An idle-in-transaction holder with a writer blocked behind it, and two LISTENers."""
    pg.psql("CREATE TABLE IF NOT EXISTS task_run (id int PRIMARY KEY, state text)")
    pg.psql("INSERT INTO task_run VALUES (1, 'RUNNING') ON CONFLICT DO NOTHING")
    holder, writer, services_a, services_b = [
        await asyncpg.connect(pg.dsn(), server_settings={"application_name": app})
        for app in ("demo-holder", "demo-writer", "prefect-services", "prefect-services")]
    await holder.execute("BEGIN; UPDATE task_run SET state = 'X' WHERE id = 1")
    blocked = asyncio.get_running_loop().create_task(
        writer.execute("UPDATE task_run SET state = 'Y' WHERE id = 1"))
    # it ends when the demo drops its connections; its error then is expected
    blocked.add_done_callback(lambda task: task.cancelled() or task.exception())
    for conn in (services_a, services_b):
        await conn.add_listener("prefect_automation_changes", lambda *_: None)
    return [holder, writer, services_a, services_b]


async def demo(incidents: bool, port: int) -> None:
    root = lab_root("prefect-pg-demo-")
    pg = start_postgres(root / "postgres")
    conns: list[asyncpg.Connection] = []
    exporter = Exporter(load({"postgres_dsn": pg.monitor_dsn(),
                              "listen_address": f"127.0.0.1:{_port(port)}",
                              "poll_interval_seconds": "5", "poll_timeout_seconds": "4",
                              "log_format": "console"}, environ={}))
    try:
        if incidents:
            conns = await _incidents(pg)
        await exporter.start()
        url = f"http://127.0.0.1:{exporter.port}/"
        print(f"\nprefect-pg-exporter demo is running\n"
              f"  exporter   {url}   (metrics: {url}metrics)\n"
              f"  postgres   psql '{pg.dsn()}'\n"
              f"  monitoring role (pg_monitor only): {pg.monitor_dsn()}\n"
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
