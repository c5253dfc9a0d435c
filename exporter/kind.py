"""A source kind: everything the exporter knows about one kind of target, in one entry.

Each kind's package (exporter/postgres, exporter/pgbouncer, exporter/prefect, exporter/redis)
declares its KIND: its name, its settings (exporter/<kind>/config.py), how to build its sources
from the configuration, its snapshot type, its `up` metric, its metric specs and families
builder, and its checks: what each one is (`checks`, declared beside the code in its
checks.py) and the functions that make their findings (`rules`). exporter/kinds.py lists
them; nothing else in the exporter names a kind. Adding a source kind is a new package and
one line there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client.core import Metric

from exporter.finding import Check, Context, Finding
from exporter.incidents.model import Observation
from exporter.metricspec import MetricOptions, MetricSpec
from exporter.settingspec import KindConfig
from exporter.source import Snapshot, Source

if TYPE_CHECKING:
    from exporter.config import Config

SnapshotT = TypeVar("SnapshotT", bound=Snapshot)


def no_incidents(snapshot: Snapshot, context: Context) -> Iterable[Observation]:
    return ()


def no_explanation(target: str, error: str, context: Context) -> Iterable[Finding]:
    return ()


def no_verdicts(targets: Sequence[str], findings: Sequence[Finding]) -> Iterable[Metric]:
    return ()


def no_joined(snapshot: Snapshot, others: Sequence[Snapshot],
              options: MetricOptions) -> Iterable[Metric]:
    return ()


@dataclass(frozen=True)
class Down:
    """What the diagnosis says of a target of this kind it cannot read, beyond the error: its
    severity and what stops with it (source_down is a warning with no more by default)."""

    severity: str
    meaning: str


@dataclass(frozen=True)
class SourceKind(Generic[SnapshotT]):
    name: str  # postgres | pgbouncer | prefect | redis: the `source` label, Source.kind
    snapshot_type: type[SnapshotT]
    up: MetricSpec  # the plain `<kind>_up` users of other exporters look for
    specs: Sequence[MetricSpec]  # every metric the families builder may emit, `up` included
    families: Callable[[SnapshotT, MetricOptions], Iterable[Metric]]
    # Every check whose findings it makes (by its rules, `unreadable` or its incidents'
    # twins): exporter/diagnosis.CHECKS gathers them, `doctor --list-checks` prints them.
    checks: Sequence[Check]
    # The functions that make the findings, run in this order over each of its snapshots.
    rules: Sequence[Callable[[SnapshotT, Context], Iterable[Finding]]]
    # The configured sources of this kind. Each kind imports its driver (asyncpg, psycopg,
    # httpx) only here, so a configuration without that kind never loads it.
    sources: Callable[[Config], Sequence[Source]]
    # Its settings and how they become its targets (exporter/<kind>/config.py), gathered by
    # exporter/config.py
    config: KindConfig
    # The incidents its snapshots show (exporter/incidents/): pure, with the checks' thresholds,
    # so that an incident begins and ends exactly when its finding appears and goes.
    incidents: Callable[[SnapshotT, Context], Iterable[Observation]] = field(
        default=no_incidents)
    # Families that join its snapshot to the other fresh snapshots (PgBouncer's server
    # connections by what their backends do on PostgreSQL); pure, like `families`.
    joined: Callable[[SnapshotT, Sequence[Snapshot], MetricOptions], Iterable[Metric]] = field(
        default=no_joined)
    # Findings that explain why one of its targets could not be read from what the other
    # fresh snapshots show (a Prefect API hanging behind a lock on PostgreSQL): (target,
    # error, context) in.
    unreadable: Callable[[str, str, Context], Iterable[Finding]] = field(
        default=no_explanation)
    down: Down | None = None
    # Families made from the diagnosis of its configured targets (their names, every finding):
    # where a check joins several kinds' snapshots with the thresholds (Prefect's sessions
    # behind a root on PostgreSQL), its verdict per target is what an alert can read.
    verdicts: Callable[[Sequence[str], Sequence[Finding]], Iterable[Metric]] = field(
        default=no_verdicts)

    def owns(self, snapshot: Snapshot) -> bool:
        return isinstance(snapshot, self.snapshot_type)

    def export(self, snapshot: Snapshot, options: MetricOptions) -> Iterable[Metric]:
        if not isinstance(snapshot, self.snapshot_type):
            raise TypeError(f"{self.name}: not a {self.snapshot_type.__name__}")
        return self.families(snapshot, options)

    def export_joined(self, snapshot: Snapshot, others: Sequence[Snapshot],
                      options: MetricOptions) -> Iterable[Metric]:
        if not isinstance(snapshot, self.snapshot_type):
            raise TypeError(f"{self.name}: not a {self.snapshot_type.__name__}")
        return self.joined(snapshot, others, options)

    def observe(self, snapshot: Snapshot, context: Context) -> Iterable[Observation]:
        if not isinstance(snapshot, self.snapshot_type):
            raise TypeError(f"{self.name}: not a {self.snapshot_type.__name__}")
        return self.incidents(snapshot, context)

    def diagnose(self, snapshot: Snapshot, context: Context) -> Iterable[Finding]:
        if not isinstance(snapshot, self.snapshot_type):
            raise TypeError(f"{self.name}: not a {self.snapshot_type.__name__}")
        return [f for rule in self.rules for f in rule(snapshot, context)]
