"""Benchmarks, each a ratio against a baseline measured in the same run on the same machine.

1. PostgreSQL poll at N backends: the exporter's PostgresSource.poll() (SQL + snapshot) versus
   the same SQL run bare through asyncpg on a plain connection. Target: <= 1.3x.
2. /metrics latency with thousands of series while polling runs: the exporter process versus a
   bare aiohttp server returning a body of the same size. Target: p99 < 5 ms.
3. The exporter's RSS after the run, and the sessions it holds on the database.
4. Footprint: the RSS of an exporter with only PostgreSQL configured and every other setting
   at its default, after three polls (15 s apart) and a scrape after each, against the RSS of
   a process that only imports what that exporter imports (the floor no runtime data can go
   under). Goal: <= 45 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg

from exporter.config import load
from exporter.postgres import source as pgsrc
from exporter.postgres.activity import ACTIVITY_SQL
from lab.common import free_port
from lab.postgres import LabPostgres
from lab.stack import running_lab
from lab.waiting import until


async def open_backends(pg: LabPostgres, n: int) -> list[asyncpg.Connection]:
    """n client sessions with distinct application names; a few in transactions or sleeping."""
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> asyncpg.Connection:
        async with sem:
            return await asyncpg.connect(
                pg.dsn(), server_settings={"application_name": f"bench-app-{i:05d}"})

    conns = await asyncio.gather(*(one(i) for i in range(n)))
    for conn in conns[: n // 20]:
        await conn.execute("BEGIN; SELECT txid_current()")  # idle in transaction
    for conn in conns[n // 20: n // 10]:
        sleeping = asyncio.get_running_loop().create_task(conn.execute("SELECT pg_sleep(3600)"))
        sleeping.add_done_callback(lambda task: task.cancelled() or task.exception())
    return conns


async def databases(conn: asyncpg.Connection) -> list[str]:
    return [r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")]


async def bare_sql(conn: asyncpg.Connection, tables: list[str], sized: list[str]) -> None:
    """The exporter's statements, nothing else: the floor for a poll (between the reads of
    the settings and sizes, which are made once a minute; sized: every database)."""
    await conn.fetchrow(pgsrc.CONTEXT_SQL, pgsrc.SETTING_NAMES, tables, False, sized)
    await conn.fetch(ACTIVITY_SQL)


async def time_polls(pg: LabPostgres, rounds: int) -> tuple[float, float]:
    config = load({"postgres_dsn": pg.monitor_dsn()}, environ={})
    source = pgsrc.PostgresSource(config.postgres_targets[0],
                                  statement_timeout_ms=config.statement_timeout_ms,
                                  connect_timeout=10, top_transactions=config.top_transactions,
                                  hot_tables=config.hot_tables)
    bare = await asyncpg.connect(pg.monitor_dsn())
    exporter_times, bare_times = [], []
    try:
        await source.poll()
        sized = await databases(bare)
        for _ in range(rounds):  # interleaved, so drift on the machine hits both alike
            t = time.perf_counter()
            await bare_sql(bare, list(config.hot_tables), sized)
            bare_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            await source.poll()
            exporter_times.append(time.perf_counter() - t)
    finally:
        await bare.close()
        await source.close()
    return statistics.median(exporter_times), statistics.median(bare_times)


STATIC_SERVER = textwrap.dedent("""
    import sys
    from aiohttp import web
    body = open(sys.argv[2], "rb").read()
    async def metrics(_):
        return web.Response(body=body, content_type="text/plain")
    app = web.Application()
    app.add_routes([web.get("/metrics", metrics)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""")


def wait_http(port: int, timeout: float = 20) -> bytes:
    """The first /metrics body the server on `port` answers with."""
    body: list[bytes] = []

    def answers() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            body[:] = [conn.getresponse().read()]
            conn.close()
            return True
        except OSError:
            return False

    until(answers, timeout, f"/metrics on port {port}")
    return body[0]


def scrape_latencies(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", "/metrics")
        conn.getresponse().read()
        times.append(time.perf_counter() - t)
    conn.close()
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape_benchmark(pg: LabPostgres, scrapes: int, root: Path) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "PREFECT_PG_EXPORTER_POSTGRES_DSN": pg.monitor_dsn(),
           "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
           "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "1",
           "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "1",
           "PREFECT_PG_EXPORTER_LABEL_TOP_N": "5000",  # every application keeps its series
           "PREFECT_PG_EXPORTER_LOG_LEVEL": "warning"}
    exporter = subprocess.Popen([sys.executable, "-m", "exporter"], env=env)
    static_port = free_port()
    static = None
    try:
        time.sleep(3)  # a few polls
        body = wait_http(port)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        (root / "body.txt").write_bytes(body)
        static = subprocess.Popen([sys.executable, "-c", STATIC_SERVER, str(static_port),
                                   str(root / "body.txt")])
        wait_http(static_port)
        scrape_latencies(port, 50)
        scrape_latencies(static_port, 50)
        exp = scrape_latencies(port, scrapes)  # polling goes on every second meanwhile
        base = scrape_latencies(static_port, scrapes)
        sessions = int(pg.psql("SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = 'prefect-pg-exporter'"))
        return {"series": series, "bytes": len(body), "p50": pct(exp, 0.5), "p99": pct(exp, 0.99),
                "base_p50": pct(base, 0.5), "base_p99": pct(base, 0.99),
                "rss_mb": rss_mb(exporter.pid), "sessions": sessions}
    finally:
        for proc in (exporter, static):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)


FOOTPRINT_GOAL_MB = 45.0
# what an exporter with only PostgreSQL configured imports, and nothing else: the floor
IMPORTS_ONLY = ("import time, exporter.app, exporter.config, exporter.postgres.source, "
                "aiohttp.web; time.sleep(600)")


def footprint_benchmark(pg: LabPostgres, polls: int = 3) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "PREFECT_PG_EXPORTER_POSTGRES_DSN": pg.monitor_dsn(),
           "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}"}
    exporter = subprocess.Popen([sys.executable, "-m", "exporter"], env=env,
                                stdout=subprocess.DEVNULL)
    floor = subprocess.Popen([sys.executable, "-c", IMPORTS_ONLY])
    interval = load({"postgres_dsn": pg.monitor_dsn()}, environ={}).poll_interval_seconds
    try:
        wait_http(port)
        for _ in range(polls):
            time.sleep(interval)
            wait_http(port)
        return {"rss_mb": rss_mb(exporter.pid), "floor_mb": rss_mb(floor.pid),
                "seconds": polls * interval}
    finally:
        for proc in (exporter, floor):
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", type=int, default=2000)
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with running_lab("prefect-pg-bench-") as lab:
        pg = lab.postgres("pg", stop_mode="immediate", max_connections=args.backends + 50,
                          extra_settings={"shared_buffers": "256MB"})
        root = lab.root
        t = time.monotonic()
        conns = await open_backends(pg, args.backends)
        print(f"opened {len(conns)} backends in {time.monotonic() - t:.1f}s", flush=True)
        exp, bare = await time_polls(pg, args.rounds)
        print(f"\nPostgreSQL poll at {args.backends} backends (median of {args.rounds}):")
        print(f"  exporter poll      {exp * 1000:8.2f} ms")
        print(f"  bare asyncpg SQL   {bare * 1000:8.2f} ms")
        print(f"  ratio              {exp / bare:8.2f}x   (target <= 1.3x)")
        r = await asyncio.to_thread(scrape_benchmark, pg, args.scrapes, root)
        print(f"\n/metrics with {r['series']:.0f} series ({r['bytes'] / 1024:.0f} KiB), "
              f"{args.scrapes} sequential scrapes while polling every second:")
        print(f"  exporter           p50 {r['p50'] * 1000:6.2f} ms   p99 {r['p99'] * 1000:6.2f} ms"
              "   (target p99 < 5 ms)")
        print(f"  bare aiohttp body  p50 {r['base_p50'] * 1000:6.2f} ms   "
              f"p99 {r['base_p99'] * 1000:6.2f} ms")
        print(f"  ratio              p50 {r['p50'] / r['base_p50']:6.2f}x     "
              f"p99 {r['p99'] / r['base_p99']:6.2f}x")
        print(f"\nexporter RSS {r['rss_mb']:.1f} MB (target < 80 MB); "
              f"sessions held on the database: {r['sessions']:.0f} (target 1)")
        f = await asyncio.to_thread(footprint_benchmark, pg)
        print(f"\nfootprint, only PostgreSQL configured, default settings, after "
              f"{f['seconds']:.0f} s at {args.backends} backends:\n"
              f"  exporter RSS {f['rss_mb']:.1f} MB ({f['rss_mb'] / FOOTPRINT_GOAL_MB:.2f}x the "
              f"goal's {FOOTPRINT_GOAL_MB:g} MB); its imports alone {f['floor_mb']:.1f} MB, so "
              f"the runtime adds {f['rss_mb'] - f['floor_mb']:.1f} MB")
        for conn in conns:
            conn.terminate()


if __name__ == "__main__":
    asyncio.run(main())
