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

from exporter.alerting import render_yaml, rule_groups
from exporter.app import Exporter
from exporter.config import load
from exporter.logs import configure
from lab import incidents
from lab.common import lab_root
from lab.pgbouncer import LabPgBouncer, start_pgbouncer
from lab.postgres import LabPostgres, start_postgres
from lab.prefect import LabPrefect, start_prefect
from lab.prefect_api import PrefectAPI
from lab.prometheus import LabPrometheus

DEFAULT_PORT = 10816
INCIDENTS = ("  incidents  an idle-in-transaction blocker with a writer behind it, two LISTEN "
             "sessions,\n             PgBouncer clients waiting for a server connection, "
             "overdue runs in work pool demo-pool\n             (Late after 15 s, no worker)")


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


async def _incidents(stack: contextlib.AsyncExitStack, pg: LabPostgres,
                     bouncer: LabPgBouncer) -> None:
    """An idle-in-transaction holder with a writer blocked behind it, two LISTENers, and more
    clients on PgBouncer than its pool has server connections: held until the demo ends."""
    await stack.enter_async_context(incidents.lock_chain(pg, app="demo"))
    await stack.enter_async_context(incidents.listeners(
        pg, apps=("prefect-services", "prefect-services")))
    await stack.enter_async_context(incidents.pool_exhaustion(
        pg, bouncer, clients=bouncer.pool_size + 3, seconds=3600))


async def demo(with_incidents: bool, port: int, with_prefect: bool, with_prometheus: bool) -> None:
    root = lab_root("prefect-pg-demo-")
    pg = start_postgres(root / "postgres")
    bouncer = start_pgbouncer(root / "pgbouncer", pg)
    prefect = start_prefect(root / "prefect", bouncer) if with_prefect else None
    stack = contextlib.AsyncExitStack()
    settings = {"postgres_dsn": pg.monitor_dsn(), "pgbouncer_dsn": bouncer.stats_dsn(),
                "listen_address": f"127.0.0.1:{_port(port)}", "poll_interval_seconds": "5",
                "poll_timeout_seconds": "4", "log_format": "console"}
    if prefect is not None:
        settings["prefect_api_url"] = prefect.api_url
    exporter = Exporter(load(settings, environ={}))
    prometheus: LabPrometheus | None = None
    try:
        if with_incidents:
            await _incidents(stack, pg, bouncer)
            if prefect is not None:
                await _late_runs(prefect)
        await exporter.start()
        if with_prometheus:
            # the shipped rules, generated here: the demo needs no checkout's alerts/ folder
            rules = root / "prefect-pg-exporter.rules.yml"
            rules.write_text(render_yaml(rule_groups()))
            prometheus = LabPrometheus(root / "prometheus", exporter.port, rules, 5.0)
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
              f"{INCIDENTS if with_incidents else ''}\n"
              f"Ctrl-C stops it and removes {root}\n", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if prometheus is not None:
            prometheus.stop()
        await exporter.stop()
        await stack.aclose()
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
