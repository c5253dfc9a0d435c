"""The diagnosis: every kind's checks over the fresh snapshots, plus the targets that cannot be
read, ranked most severe first. The same for `prefect-pg-exporter doctor`, the findings metric
and the landing page."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from exporter.finding import SEVERITY_RANK, Context, Finding, SourceFailure
from exporter.kinds import KINDS
from exporter.source import Snapshot
from exporter.thresholds import thresholds


def source_failures(failures: Sequence[SourceFailure]) -> Iterator[Finding]:
    downs = {kind.name: kind.down for kind in KINDS}
    for f in failures:
        down = downs.get(f.kind)
        yield Finding("source_down", down.severity if down else "warning", f.target,
                      f"cannot read {f.kind} {f.target}",
                      (f.error, down.meaning) if down else (f.error,),
                      "Is it up and reachable with these credentials? The exporter "
                      "keeps retrying; its other sources are not affected.")


def diagnose(snapshots: Sequence[Snapshot], failures: Sequence[SourceFailure] = (),
             overrides: Mapping[str, float] | None = None) -> list[Finding]:
    """Every finding, the most severe first."""
    context = Context(thresholds(overrides), snapshots)
    found: list[Finding] = list(source_failures(failures))
    for kind in KINDS:
        for snapshot in snapshots:
            if kind.owns(snapshot):
                found += kind.diagnose(snapshot, context)
    return sorted(found, key=lambda f: SEVERITY_RANK[f.severity])
