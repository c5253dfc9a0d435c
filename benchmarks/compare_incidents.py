"""benchmarks/compare.py's incidents: each reproduced for real with lab/incidents.py, every
exporter's /metrics scraped just before and while it holds, and judged against what would count
as that exporter detecting it.

Every verdict is read from the exporter's own output in this run. A sign is a sample that would
identify the incident: a metric name, labels it must carry, a value that must hold. It counts
only if it holds while the incident does and did not just before. The signs for
postgres_exporter are those of its current metric names (v0.17.0+ labels, the opt-in and the
proposed collectors), the same for every setup of it: a setup that does not export them simply
does not show them. When no sign holds, what did change in the families an operator would look
at is printed instead, so "not found" is never asserted without the output beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from benchmarks.compare_procs import (
    OURS,
    Peer,
    Run,
    Running,
    Sample,
    pgbouncer_peers,
    postgres_peers,
    samples,
    start_ours,
    start_peer,
)
from lab import incidents as lab
from lab.postgres import MONITOR_ROLE

# Whose metric names a sign is written in (Peer.family).
OURS_FAMILY = "ours"
PGX = "postgres_exporter"
PGB = "pgbouncer_exporter"  # prometheus-community's names; spreaker's pools use the same
PGB_DEBIAN = "debian_pgbouncer"

FAMILY_TITLES = {OURS_FAMILY: OURS, PGX: "postgres_exporter", PGB: "pgbouncer_exporter's names",
                 PGB_DEBIAN: "Debian's exporter"}

# Where to look for what changed, when no sign holds: the families of each exporter that
# describe sessions, locks and pools.
WATCHED = {
    OURS_FAMILY: ("postgres_connections", "postgres_wait_event_sessions", "postgres_blocked_*",
                  "postgres_listen_*", "postgres_transaction_*", "pgbouncer_pools_*"),
    PGX: ("pg_stat_activity_*", "pg_locks_*", "pg_long_running_*", "pg_blocked_*",
          "pg_oldest_blocked_*"),
    PGB: ("pgbouncer_pools_*",),
    PGB_DEBIAN: ("pgbouncer_*",),
}


@dataclass(frozen=True)
class Holds:
    """A condition on a sample's value, printable."""

    op: str
    n: float

    def __call__(self, value: float) -> bool:
        return value >= self.n if self.op == ">=" else value == self.n

    def __str__(self) -> str:
        return f"{self.op} {self.n:g}"


def at_least(n: float) -> Holds:
    return Holds(">=", n)


def exactly(n: float) -> Holds:
    return Holds("==", n)


@dataclass(frozen=True)
class Sign:
    """A sample that would identify an incident. `metric` is a name or an fnmatch pattern; a
    label named "*" matches any label with that value; `origin` says where the metric comes from
    (for a peer: the release or pull request that has it)."""

    metric: str
    labels: Mapping[str, str]
    holds: Holds
    origin: str = ""

    def matches(self, sample: Sample) -> bool:
        name, labels, value = sample
        return (fnmatch.fnmatchcase(name, self.metric)
                and all(_has_label(labels, k, v) for k, v in self.labels.items())
                and self.holds(value))

    def __str__(self) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in self.labels.items())
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.metric}{{{inner}}} {self.holds}{where}"


def _has_label(labels: Mapping[str, str], key: str, value: str) -> bool:
    return value in labels.values() if key == "*" else labels.get(key) == value


@dataclass(frozen=True)
class Aspect:
    """One thing to see about an incident, and the signs of it in each family's names."""

    title: str
    signs: Mapping[str, Sequence[Sign]]


@dataclass(frozen=True)
class Verdict:
    """One exporter on one aspect, from its /metrics just before and during the incident."""

    name: str
    hits: list[Sample] = field(default_factory=list)  # signs that hold now, not before
    held_before: list[Sample] = field(default_factory=list)  # signs that held before too
    changed: list[str] = field(default_factory=list)  # watched series that changed meanwhile
    unavailable: str = ""  # why it has no output: not installed, did not start


@dataclass(frozen=True)
class AspectResult:
    aspect: Aspect
    families: tuple[str, ...]  # of the exporters judged, whose signs to print
    verdicts: list[Verdict]


Observed = tuple[list[Sample], list[Sample]] | str  # (before, during), or why not measured


def judge(aspect: Aspect, peer: Peer, observed: Observed) -> Verdict:
    if isinstance(observed, str):
        return Verdict(peer.name, unavailable=observed)
    before, during = observed
    hits, held = [], []
    for sign in aspect.signs.get(peer.family, ()):
        now = [s for s in during if sign.matches(s)]
        if any(sign.matches(s) for s in before):
            held += now
        else:
            hits += now
    changed = [] if hits else changes(before, during, WATCHED.get(peer.family, ()))
    return Verdict(peer.name, hits, held, changed)


def changes(before: Sequence[Sample], during: Sequence[Sample], patterns: Sequence[str],
            limit: int = 6) -> list[str]:
    """Series of the watched families that appeared or changed value, as `series old -> new`."""
    old = {_key(s): s[2] for s in before}
    found = []
    for sample in sorted(during, key=_key):
        name, labels, value = sample
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns) or _bystander(labels):
            continue
        prev = old.get(_key(sample))
        if prev is None and value == 0:
            continue  # a series that appears at zero (a new label set's other gauge) says nothing
        if prev is None or not _same(prev, value):
            found.append(f"{series(name, labels)} {_num(prev)} -> {_num(value)}")
    extra = len(found) - limit
    return found[:limit] + ([f"and {extra} more"] if extra > 0 else [])


def _bystander(labels: Mapping[str, str]) -> bool:
    """Sessions of the exporters under test (all log in as the lab's monitoring role): they come
    and go with every poll and scrape, not with the incident."""
    return labels.get("usename") == MONITOR_ROLE


def _key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample[0], tuple(sorted(sample[1].items()))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _num(value: float | None) -> str:
    return "absent" if value is None else f"{value:g}"


def series(name: str, labels: Mapping[str, str]) -> str:
    """A series as printed: without the labels every sample carries (server, target), and
    without the empty ones (postgres_exporter's NULL labels)."""
    keep = {k: v for k, v in labels.items() if k not in ("server", "target") and v != ""}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(keep.items())) + "}"


def show(sample: Sample) -> str:
    name, labels, value = sample
    return f"{series(name, labels)} = {value:g}"


# ---- what counts as detecting each incident ----------------------------------------------------

V017 = "labels since v0.17.0"
LOCK_CHAIN = (
    Aspect("the holder: a session idle in transaction",
           {OURS_FAMILY: [Sign("postgres_connections", {"state": "idle in transaction"},
                               at_least(1))],
            PGX: [Sign("pg_stat_activity_count",
                       {"datname": "prefect", "state": "idle in transaction"}, at_least(1))]}),
    Aspect("a writer waiting for the holder's row lock",
           {OURS_FAMILY: [Sign("postgres_blocked_sessions", {}, at_least(1))],
            PGX: [Sign("pg_stat_activity_count", {"state": "active", "wait_event_type": "Lock"},
                       at_least(1), V017),
                  Sign("pg_blocked_queries", {}, at_least(1), "PR #833, unmerged"),
                  Sign("pg_oldest_blocked_age_seconds", {}, at_least(1),
                       "PR #838, unmerged")]}),
)
COPY_STALL = (Aspect(
    "COPY FROM STDIN stalled by its client: active, waiting on ClientRead",
    {OURS_FAMILY: [Sign("postgres_client_read_in_transaction_sessions", {}, at_least(1))],
     PGX: [Sign("pg_stat_activity_count", {"state": "active", "wait_event": "ClientRead"},
                at_least(1), V017)]}),)
LISTENERS = (Aspect(
    f'two sessions LISTEN "{lab.SERVICES_CHANNEL}" (two copies of the services)',
    {OURS_FAMILY: [Sign("postgres_listen_sessions", {"channel": lab.SERVICES_CHANNEL},
                        exactly(2))],
     # postgres_exporter has no metric about LISTEN in any release or PR we know of: look for
     # any series that names it or carries the channel, rather than say so unmeasured
     PGX: [Sign("*listen*", {}, at_least(2), "any metric named so"),
           Sign("*", {"*": lab.SERVICES_CHANNEL}, at_least(2), "any series with the channel")]}),)


def long_statement(seconds: float) -> tuple[Aspect, ...]:
    # the scrape comes `seconds` after it began; ours may show it up to one poll late
    old = at_least(seconds - 1.5)
    return (Aspect(
        f"a statement running for {seconds:g}s (pg_sleep)",
        {OURS_FAMILY: [Sign("postgres_transaction_max_age_seconds", {"state": "active"}, old)],
         PGX: [Sign("pg_stat_activity_max_tx_duration", {"datname": "prefect", "state": "active"},
                    old),
               Sign("pg_long_running_transactions_oldest_timestamp_seconds", {}, old,
                    "v0.14.0+, off by default")]}),)


POOL = {"database": "prefect", "user": "postgres"}


def pool_aspects(surplus: int) -> tuple[Aspect, ...]:
    waiting = Sign("pgbouncer_pools_client_waiting_connections", POOL, exactly(surplus))
    maxwait = Sign("pgbouncer_pools_client_maxwait_seconds", POOL, at_least(0.001))
    return (
        Aspect(f"{surplus} clients waiting for a server connection",
               {OURS_FAMILY: [waiting], PGB: [waiting],
                PGB_DEBIAN: [Sign("pgbouncer_waiting_clients", POOL, exactly(surplus))]}),
        Aspect("how long the oldest has waited (maxwait)",
               {OURS_FAMILY: [maxwait], PGB: [maxwait],
                PGB_DEBIAN: [Sign("*maxwait*", {}, at_least(0.001), "any metric named so")]}),
    )


# ---- reproducing them --------------------------------------------------------------------------

Reproduce = Callable[[], contextlib.AbstractAsyncContextManager[object]]


@dataclass(frozen=True)
class Incident:
    reproduce: Reproduce
    aspects: tuple[Aspect, ...]


def postgres_incidents(run: Run) -> list[Incident]:
    pg, settle = run.pg, run.args.settle
    return [
        Incident(lambda: lab.lock_chain(pg, app="incident"), LOCK_CHAIN),
        Incident(lambda: lab.copy_stall(pg), COPY_STALL),
        Incident(lambda: lab.listeners(pg), LISTENERS),
        Incident(lambda: lab.long_statement(pg), long_statement(settle)),
    ]


async def scrape_incident(ports: Mapping[str, int], reproduce: Reproduce, settle: float
                          ) -> dict[str, tuple[list[Sample], list[Sample]]]:
    """Every exporter's samples just before the incident and `settle` seconds into it (the
    lab's incidents return once the incident has really begun)."""
    before = {key: await asyncio.to_thread(samples, port) for key, port in ports.items()}
    async with reproduce():
        await asyncio.sleep(settle)
        during = {key: await asyncio.to_thread(samples, port) for key, port in ports.items()}
    await asyncio.sleep(1.5)  # let the exporters see the end before the next one begins
    return {key: (before[key], during[key]) for key in ports}


async def observe(run: Run, peers: Sequence[Peer], cases: Sequence[Incident]
                  ) -> list[AspectResult]:
    """Starts the peers (ours among them), reproduces each incident alone, judges each aspect
    for each peer, and stops them."""
    started: dict[str, Running | str] = {p.key: start_peer(run.procs, run.root, p) for p in peers}
    ports = {key: r.port for key, r in started.items() if isinstance(r, Running)}
    failed: dict[str, Observed] = {k: r for k, r in started.items() if isinstance(r, str)}
    await asyncio.sleep(2)  # a first poll of ours, a first connection of theirs
    results = []
    try:
        for case in cases:
            observed = {**await scrape_incident(ports, case.reproduce, run.args.settle),
                        **failed}
            families = tuple(dict.fromkeys(p.family for p in peers))
            results += [AspectResult(aspect, families,
                                     [judge(aspect, p, observed[p.key]) for p in peers])
                        for aspect in case.aspects]
    finally:
        for running in started.values():
            if isinstance(running, Running):
                run.procs.stop(running)
    return results


def ours(start: Callable[[], Running]) -> Peer:
    return Peer("ours", OURS_FAMILY, OURS, lambda _procs, _root: start())


async def postgres_section(run: Run) -> list[AspectResult]:
    """The PostgreSQL incidents against ours and every setup of postgres_exporter."""
    me = ours(lambda: start_ours(run.procs, run.root, 1.0, postgres_dsn=run.pg.monitor_dsn()))
    return await observe(run, [me, *postgres_peers(run.pg)], postgres_incidents(run))


POOL_SURPLUS = 3


async def pool_section(run: Run) -> list[AspectResult]:
    """Pool exhaustion: more clients in pg_sleep through PgBouncer than its pool has server
    connections, against ours and the PgBouncer exporters."""
    bouncer = run.bouncer
    me = ours(lambda: start_ours(run.procs, run.root, 1.0, pgbouncer_dsn=bouncer.stats_dsn()))
    case = Incident(lambda: lab.pool_exhaustion(run.pg, bouncer,
                                                clients=bouncer.pool_size + POOL_SURPLUS),
                    pool_aspects(POOL_SURPLUS))
    return await observe(run, [me, *pgbouncer_peers(bouncer)], [case])
