"""benchmarks/compare.py's report: the tables, the ratios and the verdicts it prints."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path

from benchmarks.compare_incidents import FAMILY_TITLES, AspectResult, Verdict, show
from benchmarks.compare_procs import (
    CURRENT_QUERIES,
    OURS,
    PG_EXPORTER,
    Figures,
    Run,
    bouncer_version,
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def print_figures(rows: Sequence[Figures], server: str) -> None:
    """One line per exporter scraped; ours also gets a line for its poll (duration p50/p99,
    CPU per poll, the server's CPU per poll)."""
    width = max(34, *(len(f.name) + 13 for f in rows))
    logins = any(f.logins is not None for f in rows)
    print(f"  {'':{width}}{'p50':>11}{'p99':>11}{'CPU':>11}{server + ' CPU':>14}{'RSS':>10}"
          f"  held (max)  series{'  new conns' if logins else ''}")
    for f in rows:
        kind = ", scraped" if f.polls else ""
        server_cpu = f"{'':14}" if f.polls else f"   {ms(f.server_cpu or 0.0)}"
        new = f"{f.logins:11.2f}" if f.logins is not None and not f.polls else ""
        print(f"  {f.name + kind:{width}}{ms(f.p50)}{ms(f.p99)}{ms(f.cpu)}{server_cpu}"
              f"{f.rss:7.1f} MB  {f.held} ({f.max_held}){'':5}{f.series:7}{new}")
        if f.polls:
            new = f"{f.logins:11.2f}" if f.logins is not None else ""
            print(f"  {f.name + ', its poll':{width}}{ms(f.poll_p50)}{ms(f.poll_p99)}"
                  f"{ms(f.poll_cpu)}   {ms(f.server_cpu or 0.0)}{'':30}{new}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b > 0 else "n/a"


def print_ratios(ours: Figures, theirs: Figures, server: str) -> None:
    ours_cost = ours.poll_cpu + ours.cpu  # one poll per scrape: what a scrape costs us
    mine = ours.name.replace(OURS, "ours")
    print(f"  {mine} / {theirs.name}: scrape p50 {ratio(ours.p50, theirs.p50)}, "
          f"p99 {ratio(ours.p99, theirs.p99)}; poll p50 / their scrape p50 "
          f"{ratio(ours.poll_p50, theirs.p50)}")
    print(f"    CPU (poll + scrape) / scrape {ratio(ours_cost, theirs.cpu)}; {server} CPU "
          f"poll / scrape {ratio(ours.server_cpu or 0.0, theirs.server_cpu or 0.0)}; "
          f"RSS {ratio(ours.rss, theirs.rss)}; held {ours.held} vs {theirs.held}"
          + (f" (it opens {theirs.logins:.2f} per scrape)" if theirs.logins else ""))


def print_floor(what: str, floor: tuple[float, float, float, float], rounds: int) -> None:
    ours_wall, bare_wall, ours_cpu, bare_cpu = floor
    print(f"  floor, median of {rounds} interleaved: our {what} {ms(ours_wall)} wall "
          f"{ms(ours_cpu)} CPU; bare {ms(bare_wall)} wall {ms(bare_cpu)} CPU; "
          f"ratio {ratio(ours_wall, bare_wall)} wall, {ratio(ours_cpu, bare_cpu)} CPU")


def print_sessions_read(read_cpu: float, ours: Figures, theirs: Sequence[Figures]) -> None:
    """The database's floor: one bare read of the sessions, against our poll and their scrapes."""
    per_scrape = ", ".join(f"{ratio(read_cpu, t.server_cpu or 0.0)} of {t.name}'s scrape"
                           for t in theirs)
    print(f"  one bare read of the sessions (pg_stat_get_activity), nothing else: "
          f"{ms(read_cpu).strip()} DB CPU; {per_scrape}; our poll is "
          f"{ratio(ours.server_cpu or 0.0, read_cpu)} of it")


def print_incidents(results: Sequence[AspectResult]) -> None:
    """Per aspect: the signs looked for in each family's names, then each exporter's verdict
    with the samples behind it."""
    for result in results:
        print(f"  {result.aspect.title}")
        for family in result.families:
            signs = result.aspect.signs.get(family, ())
            looked = "; ".join(str(sign) for sign in signs) or "none defined"
            print(f"    signs in {FAMILY_TITLES.get(family, family)}: {looked}")
        width = max(len(v.name) for v in result.verdicts) + 2
        for verdict in result.verdicts:
            lines = verdict_lines(verdict)
            print(f"    {verdict.name:{width}}{lines[0]}")
            for line in lines[1:]:
                print(f"    {'':{width}}{line}")


def verdict_lines(verdict: Verdict) -> list[str]:
    if verdict.unavailable:
        return [f"not measured: {verdict.unavailable}"]
    lines = [f"DETECTED  {show(hit)}" for hit in verdict.hits]
    lines += [f"held before too (no detection): {show(s)}" for s in verdict.held_before]
    if not verdict.hits:
        lines.insert(0, "not found" + ("; changed meanwhile:" if verdict.changed
                                        else "; nothing watched changed"))
        lines += [f"  {change}" for change in verdict.changed]
    return lines


# ---- main ---------------------------------------------------------------------------------------

def machine() -> str:
    mem = next((int(line.split()[1]) / 1024 / 1024 for line in
                Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")),
               0.0)
    return (f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def header(run: Run) -> None:
    version = run.pg.psql("SHOW server_version")
    print(f"Side by side, one run: {machine()}; PostgreSQL {version}, PgBouncer "
          f"{bouncer_version(run.bouncer)}")
    if not shutil.which(PG_EXPORTER):
        print(f"  skipped postgres_exporter: not installed "
              f"(apt-get install -y {PG_EXPORTER})")
    args = run.args
    print(f"  postgres_exporter runs twice: its defaults, and \"emulated current\" with "
          f"--extend.query-path={CURRENT_QUERIES.name} (the SQL of v0.20.1's stat_activity and "
          "long_running_transactions collectors and of PRs #833/#838, see that file).\n"
          f"  Scrapes are sequential on one keep-alive connection: {args.scrapes} of each "
          f"collect-on-scrape exporter, which queries on every scrape, {args.our_scrapes} of "
          f"{OURS}, which polls on its own (every {args.interval:g}s here; {args.polls} polls "
          f"watched for their duration, {args.polls} more with nothing scraping for CPU).\n"
          "  CPU: utime+stime from /proc/<pid>/stat (10 ms ticks); DB CPU: the exporter's own "
          "backends; held: sessions (connections) it holds at the end, most seen at once; "
          "series: samples in one /metrics.",
          flush=True)
