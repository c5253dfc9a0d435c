"""Redis poll benchmark: does a poll cost the same at 10 and at 100,000 stream entries, and at
10 and at 10,000 unrelated keys?

Starts a lab Redis 7 (Debian's redis-server) with Prefect's shape: `events` with the groups
event-persister (one consumer, 5 entries pending), reactive-triggers and task-run-recorder,
`actions`, and Docket's `prefect:stream` on db 0 (one target, so that the keys and the
streams share one keyspace). Each case fills it with N stream entries (XADD) and K unrelated
string keys, then polls it with the exporter's RedisSource (the read-only ACL user the lab
gives the exporter) after one warm-up poll: the commands per poll as the source counts them and
as Redis counts them (INFO commandstats, the measuring INFO subtracted), and the wall time per
poll (median and slowest). The cases take turns, so a machine busy with something else slows
them alike. Then the RSS of a fresh exporter process (lab/once.py) polling each case's Redis
five times, against the first case's.

    .venv/bin/python -m benchmarks.redis_bench [--polls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.compare_kinds import rss_mb
from exporter.redis.source import RedisSource
from exporter.redis.target import parse_redis_target
from lab.redis import LabRedis
from lab.stack import Lab, running_lab

RSS_POLLS = 5
CASES = ((10, 10), (100_000, 10), (10, 10_000), (100_000, 10_000), (10, 100_000))  # (entries, keys)


@dataclass
class Case:
    entries: int
    keys: int
    redis: LabRedis
    admin: Any  # one connection for the measuring INFO (a new one would count its AUTH)
    source: RedisSource
    times: list[float]
    commands: list[int]
    server_commands: list[int]


def fill(redis: LabRedis, entries: int, keys: int) -> None:
    client = redis.client(0)
    pipe = client.pipeline(transaction=False)
    for i in range(entries):
        pipe.xadd("events", {"event": f'{{"id": {i}, "event": "prefect.flow-run.Running"}}'})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    client.xgroup_create("events", "event-persister", id="0")
    client.xreadgroup("event-persister", "services-host-1", {"events": ">"}, count=5)
    client.xgroup_create("events", "reactive-triggers", id="$")
    client.xgroup_create("events", "task-run-recorder", id="$")
    client.xadd("actions", {"action": "{}"})
    client.xadd("prefect:stream", {"task": "late_runs"})
    client.xgroup_create("prefect:stream", "docket-workers", id="0")
    for start in range(0, keys, 5000):
        client.mset({f"app:key:{i}": "x" for i in range(start, min(keys, start + 5000))})


def server_calls(admin: Any) -> int:
    stats = admin.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def poll(case: Case) -> None:
    before = server_calls(case.admin)
    started = time.perf_counter()
    snap = await case.source.poll()
    case.times.append(time.perf_counter() - started)
    case.commands.append(snap.commands)
    # less the measuring INFO before (Redis counts a command once it has run)
    case.server_commands.append(server_calls(case.admin) - before - 1)


async def main(polls: int) -> None:
    with running_lab("prefect-pg-redis-bench-") as lab:
        await run(lab, polls)


async def run(lab: Lab, polls: int) -> None:
    cases: list[Case] = []
    try:
        for entries, keys in CASES:
            redis = lab.redis(f"redis-{entries}-{keys}")
            fill(redis, entries, keys)
            source = RedisSource(parse_redis_target(f"bench={redis.url(0)}", "bench"),
                                 timeout=10, consumer_idle_seconds=60)
            cases.append(Case(entries, keys, redis, redis.client(0), source, [], [], []))
            await source.poll()  # connects; Prefect's streams looked up by name
        for _ in range(polls):
            for case in cases:
                await poll(case)
        base = statistics.median(cases[0].times)
        print("| stream entries | unrelated keys | commands per poll (source / Redis) "
              "| median poll | slowest poll | median vs 10/10 |")
        print("|---:|---:|---|---:|---:|---:|")
        for case in cases:
            median = statistics.median(case.times)
            print(f"| {case.entries:,} | {case.keys:,} | {min(case.commands)}–"
                  f"{max(case.commands)} / {min(case.server_commands)}–"
                  f"{max(case.server_commands)} | {median * 1000:.2f} ms | "
                  f"{max(case.times) * 1000:.2f} ms | {median / base:.2f}x |")
        # the exporter's own memory with this data: a fresh process, Redis as its only target
        rss = {(c.entries, c.keys): rss_mb({"redis_url": c.redis.url(0)}, RSS_POLLS)
               for c in cases}
        first = rss[CASES[0]]
        print(f"\nRSS of a fresh exporter (Redis only) after {RSS_POLLS} polls:")
        for (entries, keys), mb in rss.items():
            print(f"  {entries:>7,} entries, {keys:>7,} keys: {mb:5.1f} MB "
                  f"({mb - first:+.1f} MB vs 10/10)")
    finally:
        for case in cases:
            await case.source.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=30)
    asyncio.run(main(parser.parse_args().polls))
