"""The diagnosis: every kind's checks over the fresh snapshots, plus the targets that cannot be
read, ranked most severe first. The same for `prefect-pg-exporter doctor`, the findings metric
and the landing page."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from exporter.finding import SEVERITY_RANK, Context, Finding, SourceFailure
from exporter.kinds import KINDS
from exporter.source import Snapshot
from exporter.thresholds import thresholds


def unreadable(failures: Sequence[SourceFailure], context: Context) -> Iterator[Finding]:
    """Why a target cannot be read, when the other snapshots show it (its kind's
    `unreadable`: a Prefect API hanging behind a lock on PostgreSQL)."""
    for kind in KINDS:
        for failure in failures:
            if failure.kind == kind.name:
                yield from kind.unreadable(failure.target, failure.error, context)


def source_failures(failures: Sequence[SourceFailure]) -> Iterator[Finding]:
    for f in failures:
        yield Finding("source_down", "warning", f.target, f"cannot read {f.kind} {f.target}",
                      (f.error,), "Is it up and reachable with these credentials? The exporter "
                      "keeps retrying; its other sources are not affected.")


def diagnose(snapshots: Sequence[Snapshot], failures: Sequence[SourceFailure] = (),
             overrides: Mapping[str, float] | None = None) -> list[Finding]:
    """Every finding, the most severe first."""
    context = Context(thresholds(overrides), snapshots)
    found: list[Finding] = list(source_failures(failures))
    found += unreadable(failures, context)
    for kind in KINDS:
        for snapshot in snapshots:
            if kind.owns(snapshot):
                found += kind.diagnose(snapshot, context)
    return sorted(found, key=lambda f: SEVERITY_RANK[f.severity])
