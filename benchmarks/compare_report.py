"""benchmarks/compare.py's report: the tables, the ratios and the verdicts it prints."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path

from benchmarks.compare_procs import OURS, PG_EXPORTER, Figures, Run, bouncer_version

Verdicts = list[tuple[str, list[tuple[str, str]]]]  # (aspect, [(exporter, verdict)])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def print_figures(rows: Sequence[Figures], server: str) -> None:
    """One line per exporter scraped; ours also gets a line for its poll (duration p50/p99,
    CPU per poll, the server's CPU per poll)."""
    width = max(34, *(len(f.name) + 13 for f in rows))
    logins = any(f.logins is not None for f in rows)
    print(f"  {'':{width}}{'p50':>11}{'p99':>11}{'CPU':>11}{server + ' CPU':>14}{'RSS':>10}"
          f"  held (max){'  new conns' if logins else ''}")
    for f in rows:
        kind = ", scraped" if f.polls else ""
        server_cpu = f"{'':14}" if f.polls else f"   {ms(f.server_cpu or 0.0)}"
        new = f"{f.logins:11.2f}" if f.logins is not None and not f.polls else ""
        print(f"  {f.name + kind:{width}}{ms(f.p50)}{ms(f.p99)}{ms(f.cpu)}{server_cpu}"
              f"{f.rss:7.1f} MB  {f.held} ({f.max_held}){'':5}{new}")
        if f.polls:
            new = f"{f.logins:11.2f}" if f.logins is not None else ""
            print(f"  {f.name + ', its poll':{width}}{ms(f.poll_p50)}{ms(f.poll_p99)}"
                  f"{ms(f.poll_cpu)}   {ms(f.server_cpu or 0.0)}{'':23}{new}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b > 0 else "n/a"


def print_ratios(ours: Figures, theirs: Figures, server: str) -> None:
    ours_cost = ours.poll_cpu + ours.cpu  # one poll per scrape: what a scrape costs us
    print(f"  ours / {theirs.name}: scrape p50 {ratio(ours.p50, theirs.p50)}, "
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


def print_verdicts(rows: Verdicts) -> None:
    width = max((len(name) for _, lines in rows for name, _ in lines), default=0) + 2
    for title, lines in rows:
        print(f"  {title}")
        for name, line in lines:
            print(f"    {name:{width}}{line}")


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
    print(f"  Scrapes are sequential on one keep-alive connection: {args.scrapes} of each "
          f"collect-on-scrape exporter, which queries on every scrape, {args.our_scrapes} of "
          f"{OURS}, which polls on its own (every {args.interval:g}s here; {args.polls} polls "
          f"watched for their duration, {args.polls} more with nothing scraping for CPU).\n"
          "  CPU: utime+stime from /proc/<pid>/stat (10 ms ticks); DB CPU: the exporter's own "
          "backends; held: sessions (connections) it holds at the end, most seen at once.",
          flush=True)

