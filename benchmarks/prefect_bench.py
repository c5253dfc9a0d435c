"""Prefect poll benchmark: does a poll cost the same at 1,000 and at 100,000 flow runs, and at
1,000 and at 1,000,000 events?

Starts the lab (PostgreSQL, PgBouncer in transaction pooling, Prefect 3.8.8 servers whose
databases go through PgBouncer). A server with its event persister on creates a work pool, a
deployment and one SCHEDULED run through the REST API, so the events of that run are real rows,
and stops. Each size is a database of its own, a copy of the one before (CREATE DATABASE ...
TEMPLATE) plus what it lacks: that run's row copied with generate_series into `flow_run` and
`flow_run_state` (a fixed mix of states and times, see KINDS), and one of its real events into
`events` and `event_resources` (half of them renamed flow-run heartbeats, spread over the
retention period, see INSERT_EVENTS). Then a server without its services per size (nothing
changes or deletes the data), all running at once, and measured in the same run:

1. the exporter's PrefectSource.poll(): median wall time, HTTP requests per poll; as it runs
   (retention read every 5 minutes, cached in between) and with retention read on every poll;
2. the baseline "an exporter that pages through runs": every SCHEDULED run through
   POST /flow_runs/filter, limit 200, offset paging, counted client-side;
3. PrefectHQ/prometheus-prefect-exporter, where it can be set up (a checkout and a virtualenv
   under /tmp): its /metrics scrape end to end, and its requests per scrape through a counting
   reverse proxy.

Sizes: --small runs and --events-small events; --large runs, same events; --large runs and
--events events (the exporter alone: the others do not read events). The exporter's polls of
every size take turns, so a machine busy with something else slows them alike; ratios are
against the first size.

This module only composes the parts, one module per job: prefect_data (the template run, the
generated runs and events, the counts), prefect_polls (the exporter's polls, timed),
prefect_paging (the paging baseline and its extrapolation), prefect_ppe (installing, starting
and scraping the third-party exporter), counting_proxy (its requests counted) and
prefect_report (what is printed); lab.stack starts and stops the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.prefect_data import (
    HISTORY_SECONDS,
    MIXES,
    NEVER,
    RECENT_EVENTS,
    RECENT_SECONDS,
    TEMPLATE_ENV,
    Size,
    add_events,
    add_runs,
    clone_database,
    create_template_run,
    run_counts,
    settle,
    template_event,
)
from benchmarks.prefect_paging import time_paging
from benchmarks.prefect_polls import time_exporters
from benchmarks.prefect_ppe import (
    PpeResult,
    ensure_ppe,
    ppe_commit,
    start_ppe_pair,
    stop_ppe_pair,
    time_ppe,
)
from benchmarks.prefect_report import SizeResult, print_ratios, print_size
from lab.common import LabError
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.stack import Lab, running_lab

# ---- lab ---------------------------------------------------------------------------------------

@dataclass
class Bench:
    args: argparse.Namespace
    lab: Lab
    sizes: list[Size]
    postgres: LabPostgres | None = None
    bouncer: LabPgBouncer | None = None
    template: str = ""
    template_event: str = ""

    @property
    def pg(self) -> LabPostgres:
        assert self.postgres is not None
        return self.postgres


def start_lab(bench: Bench) -> LabPrefect:
    """PostgreSQL, PgBouncer routing every size's database, and a Prefect server with its
    services on the first one, where the template is made."""
    bench.postgres = bench.lab.postgres()
    bench.bouncer = bench.lab.pgbouncer(bench.postgres,
                                        databases=tuple(s.database for s in bench.sizes))
    return bench.lab.prefect(bench.bouncer, "template", database=bench.sizes[0].database,
                             extra_env=TEMPLATE_ENV)


def start_servers(bench: Bench) -> list[LabPrefect]:
    """A Prefect server without its services per size, all at once: nothing changes or deletes
    the data while they are measured."""
    assert bench.bouncer is not None
    servers = [bench.lab.prefect_server(bench.bouncer, f"prefect-{s.database}",
                                        database=s.database, services=False)
               for s in bench.sizes]
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()
    return servers


# ---- one size ----------------------------------------------------------------------------------

async def build_data(bench: Bench) -> list[tuple[float, float]]:
    """Each size's database: a copy of the one before, plus the runs and events it lacks.
    Seconds taken to add the runs and the events, by size."""
    args, pg = bench.args, bench.pg
    finished_from = args.small if args.mix == "growing-history" else NEVER
    seconds = []
    previous = Size(bench.sizes[0].database, 1, 0)  # the template run; the setup's events
    for size in bench.sizes:
        print(f"size {size.runs:,} runs, {size.events:,} events: database {size.database}",
              flush=True)
        if size.database != previous.database:
            await asyncio.to_thread(clone_database, pg, previous.database, size.database)
        runs = await add_runs(pg, size.database, bench.template, previous.runs, size.runs,
                              finished_from) if size.runs > previous.runs else 0.0
        events = await add_events(pg, size.database, bench.template_event, previous.events,
                                  size.events) if size.events > previous.events else 0.0
        seconds.append((runs, events))
        previous = size
    return seconds


async def measure(bench: Bench, servers: list[LabPrefect],
                  seconds: list[tuple[float, float]]) -> list[SizeResult]:
    """The exporter at every size at once; the paging baseline and the third-party exporter
    at the first two sizes (they read no events), one size after the other."""
    args = bench.args
    counted = []
    for size in bench.sizes:  # as a live server keeps writing, just before the polls
        await add_events(bench.pg, size.database, bench.template_event, 0, RECENT_EVENTS,
                         RECENT_SECONDS, 1.0, analyze=False)
        counts = await run_counts(bench.pg, size.database)
        if counts.consistent != sum(counts.by_type.values()):
            raise LabError(f"{size.database}: {sum(counts.by_type.values()) - counts.consistent}"
                           " runs without a matching state row")
        counted.append(counts)
    flushed = await settle(bench.pg)
    print(f"\npolling the exporter at every size in turn (data flushed to disk in "
          f"{flushed:.1f}s)", flush=True)
    polls = await time_exporters([s.api_url for s in servers], args.polls)
    results = [SizeResult(size, counts, *added, *poll) for size, counts, added, poll
               in zip(bench.sizes, counted, seconds, polls, strict=True)]
    ppe_unavailable = await ppe_missing(args)
    for result, server in list(zip(results, servers, strict=True))[:2]:
        scheduled = result.counts.by_type.get("SCHEDULED", 0)
        print(f"  {result.size.runs:,} runs: paging through {scheduled:,} SCHEDULED runs",
              flush=True)
        result.paging = await time_paging(server.api_url, scheduled, args.baseline_rounds,
                                          args.budget, args.paging_cap)
        result.ppe = ppe_unavailable or await time_ppe_at(bench, server.api_url)
    return results


async def ppe_missing(args: argparse.Namespace) -> str:
    """Why prometheus-prefect-exporter is not measured; '' when it is ready to be."""
    if args.no_ppe:
        return "skipped (--no-ppe)"
    reason = await asyncio.to_thread(ensure_ppe, args.ppe_dir, args.ppe_venv)
    return f"not measured: {reason}" if reason else ""



async def time_ppe_at(bench: Bench, api_url: str) -> PpeResult | str:
    """prometheus-prefect-exporter against one size's server: started, scraped, stopped."""
    print(f"  scraping prometheus-prefect-exporter {ppe_commit(bench.args.ppe_dir)} (defaults: "
          "PAGINATION_LIMIT 200, OFFSET_MINUTES 3)", flush=True)
    pair = await start_ppe_pair(bench.args.ppe_dir, bench.args.ppe_venv,
                                bench.lab.root / "ppe", api_url)
    if isinstance(pair, str):
        return pair
    try:
        return await guarded(time_ppe(*pair, bench.args.ppe_scrapes, bench.args.budget))
    finally:
        await stop_ppe_pair(pair)


async def guarded(work: Awaitable[PpeResult]) -> PpeResult | str:
    try:
        return await work
    except (httpx.HTTPError, LabError) as exc:
        return f"scrape failed: {type(exc).__name__}: {str(exc)[:200]}"



# ---- main --------------------------------------------------------------------------------------

def sizes_of(args: argparse.Namespace) -> list[Size]:
    sizes = [Size("prefect", args.small, args.events_small),
             Size("prefect_runs", args.large, args.events_small)]
    if args.events > args.events_small:
        sizes.append(Size("prefect_events", args.large, args.events))
    return sizes



async def run(args: argparse.Namespace) -> None:
    with running_lab("prefect-pg-bench-") as lab:
        bench = Bench(args, lab, sizes_of(args))
        template = await asyncio.to_thread(start_lab, bench)
        bench.template = await create_template_run(template.api_url)
        bench.template_event = await template_event(bench.pg, bench.sizes[0].database)
        await asyncio.to_thread(template.stop)
        print(f"lab up: Prefect 3.8.8, its databases through PgBouncer (transaction pooling)\n"
              f"runs: 1 created through the REST API, the rest copied from it in SQL; mix "
              f"{args.mix}: {MIXES[args.mix]}\nevents: copies of one the server stored, half "
              f"of them heartbeats, over the last {HISTORY_SECONDS / 86400:.1f} days, and "
              f"{RECENT_EVENTS} more within {RECENT_SECONDS:g}s before the polls", flush=True)
        seconds = await build_data(bench)
        servers = await asyncio.to_thread(start_servers, bench)
        print(f"{len(servers)} Prefect servers without their services, one per size",
              flush=True)
        results = await measure(bench, servers, seconds)
        for result in results:
            print_size(result)
        for result in results[1:]:
            print_ratios(results[0], result)
        if len(results) == 3:
            print_ratios(results[1], results[2])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run prefect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add: Callable[..., object] = parser.add_argument
    add("--small", type=int, default=1_000, help="flow runs at the first size")
    add("--large", type=int, default=100_000, help="flow runs at the second size")
    add("--events-small", type=int, default=1_000,
        help="events at the first two sizes (besides the recent ones added before each)")
    add("--events", type=int, default=1_000_000,
        help="events at the third size, with --large runs (not above --events-small: no third "
             "size)")
    add("--polls", type=int, default=21, help="exporter polls timed at each size (twice: as it "
        "runs, and reading retention on every poll, alternated)")
    add("--baseline-rounds", type=int, default=3, help="paging rounds at most, at each size")
    add("--paging-cap", type=int, default=100_000, help="the paging baseline stops at this many")
    add("--budget", type=float, default=300.0,
        help="seconds for the paging baseline (and the third-party scrapes) at each size; past "
             "it, pages are sampled and the rest extrapolated")
    add("--ppe-scrapes", type=int, default=3, help="prometheus-prefect-exporter scrapes timed")
    add("--ppe-dir", type=Path, default=Path("/tmp/prometheus-prefect-exporter"),
        help="its checkout (cloned there when missing)")
    add("--ppe-venv", type=Path, default=Path("/tmp/prometheus-prefect-exporter-venv"),
        help="its virtualenv (made there when missing)")
    add("--no-ppe", action="store_true", help="do not measure prometheus-prefect-exporter")
    add("--mix", choices=tuple(MIXES), default="growing-history",
        help="how the generated runs are spread over states: " + "; ".join(
            # argparse formats help with %: the mix's percentages escaped (--help failed)
            f"{name}: {text}" for name, text in MIXES.items()).replace("%", "%%"))
    args = parser.parse_args(argv)
    if not 1 < args.small < args.large:
        parser.error("need 1 < --small < --large")
    if args.events_small < 1:
        parser.error("need --events-small >= 1")
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    asyncio.run(run(args))
    print(f"\n(whole run {math.ceil(time.monotonic() - started)}s)")


if __name__ == "__main__":
    main()
