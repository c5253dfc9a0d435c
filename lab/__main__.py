"""The demo: the lab on loopback and the exporter against it, until Ctrl-C.

    scripts/demo                 # PostgreSQL, PgBouncer, Prefect, the exporter, Prometheus
                                 # with the shipped rules, and a few incidents
    scripts/demo --no-incidents  # a quiet lab
    scripts/demo --no-prefect    # without the Prefect server (quicker on a first run)
    scripts/demo --ha            # Prefect in HA instead: two API replicas (--no-services),
                                 # one services process, Redis for messaging and Docket
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from datetime import timedelta

from exporter.alerting import render_yaml, rule_groups
from exporter.app import Exporter
from exporter.config import load
from exporter.logs import configure
from lab import incidents
from lab.ha import LabPrefectHA
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.prefect_api import PrefectAPI
from lab.prometheus import LabPrometheus
from lab.stack import Lab, running_lab

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


def _scrape_configs(exporter_port: int, ha: LabPrefectHA) -> str:
    """The exporter, and each replica's own /api/metrics as job prefect-api (the HA
    dashboard's optional panels): beside the exporter, never through it."""
    replicas = ", ".join(f"'127.0.0.1:{r.port}'" for r in ha.replicas)
    return (f"scrape_configs:\n  - job_name: prefect-pg-exporter\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
            f"  - job_name: prefect-api\n    metrics_path: /api/metrics\n"
            f"    static_configs:\n      - targets: [{replicas}]\n")


async def demo(with_incidents: bool, port: int, with_prefect: bool, with_prometheus: bool,
               with_ha: bool = False) -> None:
    with running_lab("prefect-pg-demo-") as lab:
        pg = lab.postgres()
        bouncer = lab.pgbouncer(pg)
        ha = lab.prefect_ha(bouncer, lab.redis()) if with_ha else None
        prefect = lab.prefect(bouncer) if with_prefect and not ha else None
        async with contextlib.AsyncExitStack() as stack:
            await _serve(stack, lab, pg, bouncer, prefect, ha, with_incidents, port,
                         with_prometheus)


async def _serve(stack: contextlib.AsyncExitStack, lab: Lab, pg: LabPostgres,
                 bouncer: LabPgBouncer, prefect: LabPrefect | None, ha: LabPrefectHA | None,
                 with_incidents: bool, port: int, with_prometheus: bool) -> None:
    """The incidents, the exporter and Prometheus, until a signal; each stopped by `stack`
    (Prometheus, the exporter, then the incidents) before the lab's servers."""
    settings = {"postgres_dsn": pg.monitor_dsn(), "pgbouncer_dsn": bouncer.stats_dsn(),
                "listen_address": f"127.0.0.1:{_port(port)}", "poll_interval_seconds": "5",
                "poll_timeout_seconds": "4", "log_format": "console"}
    if prefect is not None:
        settings["prefect_api_url"] = prefect.api_url
    if ha is not None:
        settings["prefect_api_url"] = ha.named_api_urls()
        settings["redis_url"] = ha.exporter_redis_urls()
    exporter = Exporter(load(settings, environ={}))
    prometheus: LabPrometheus | None = None
    if with_incidents:
        await _incidents(stack, pg, bouncer)
        late_runs_on = prefect or (ha.replicas[0] if ha is not None else None)
        if late_runs_on is not None:
            await _late_runs(late_runs_on)
    stack.push_async_callback(exporter.stop)
    await exporter.start()
    if with_prometheus:
        # the shipped rules, generated here: the demo needs no checkout's alerts/ folder
        rules = lab.root / "prefect-pg-exporter.rules.yml"
        rules.write_text(render_yaml(rule_groups()))
        prometheus = LabPrometheus(lab.root / "prometheus", exporter.port, rules, 5.0,
                                   _scrape_configs(exporter.port, ha) if ha else None)
        stack.callback(prometheus.stop)
        prometheus.start()
    url = f"http://127.0.0.1:{exporter.port}/"
    print(f"\nprefect-pg-exporter demo is running\n"
          f"  exporter   {url}   (metrics: {url}metrics; findings on the page, or: "
          f"prefect-pg-exporter doctor with the DSNs below)\n"
          + (f"  prometheus {prometheus.url}/alerts   (the shipped rules; pages after "
             f"their `for:`, minutes)\n" if prometheus else "")
          + (f"  prefect    {prefect.api_url}   (3.8.8, its database through PgBouncer)\n"
             if prefect else "")
          + (f"  prefect HA {', '.join(r.api_url for r in ha.replicas)}   (3.8.8 replicas "
             f"with --no-services; services log: {ha.services.log})\n"
             f"  redis      redis-cli -u {ha.redis.url(0, monitor=False)}"
             f"   (messaging db 0, Docket db 1)\n"
             f"  try        kill {ha.services.pid}   (the services process): within a "
             f"minute the page and the doctor\n             say the services are down "
             f"while both replicas answer\n"
             if ha else "")
          + f"  postgres   psql '{pg.dsn()}'\n"
          f"  monitoring role (pg_monitor only): {pg.monitor_dsn()}\n"
          f"  pgbouncer  psql '{bouncer.dsn()}'   (transaction pooling, "
          f"pool size {bouncer.pool_size})\n"
          f"  admin console (stats_users): psql '{bouncer.stats_dsn()}'\n"
          f"{INCIDENTS if with_incidents else ''}\n"
          f"Ctrl-C stops it and removes {lab.root}\n", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-incidents", action="store_true", help="a quiet lab")
    parser.add_argument("--no-prefect", action="store_true", help="no Prefect server")
    parser.add_argument("--no-prometheus", action="store_true", help="no Prometheus")
    parser.add_argument("--ha", action="store_true",
                        help="Prefect in HA: two API replicas, a services process, Redis")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="exporter port (a free one if taken)")
    args = parser.parse_args()
    configure("info", "console")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(demo(not args.no_incidents, args.port, not args.no_prefect,
                         not args.no_prometheus, args.ha))


if __name__ == "__main__":
    main()
