"""The diagnosis: every kind's checks over the fresh snapshots, plus the targets that cannot be
read, root causes before their symptoms, then the most severe first. The same for
`prefect-pg-exporter doctor`, the findings metric and the landing page."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from exporter.finding import ROOT, SEVERITY_RANK, SYMPTOM, Check, Context, Finding, SourceFailure
from exporter.kinds import KINDS
from exporter.source import Snapshot
from exporter.thresholds import thresholds

SOURCE_DOWN = Check(
    "source_down", tuple(sorted({"warning", *(kind.down.severity for kind in KINDS if kind.down)},
                                key=SEVERITY_RANK.__getitem__)),
    "a target cannot be read (more than a warning where its kind says what stops with it: "
    "Redis)")

# Every check of the diagnosis, gathered from the kinds (each declares its own in its checks.py):
# `doctor --list-checks` prints them; a unit test proves each one fires.
CHECKS: tuple[Check, ...] = (SOURCE_DOWN, *(check for kind in KINDS for check in kind.checks))
BY_ID: dict[str, Check] = {check.id: check for check in CHECKS}


def unreadable(failures: Sequence[SourceFailure], context: Context) -> Iterator[Finding]:
    """Why a target cannot be read, when the other snapshots show it (its kind's
    `unreadable`: a Prefect API hanging behind a lock on PostgreSQL)."""
    for kind in KINDS:
        for failure in failures:
            if failure.kind == kind.name:
                yield from kind.unreadable(failure.target, failure.error, context)


def source_failures(failures: Sequence[SourceFailure]) -> Iterator[Finding]:
    downs = {kind.name: kind.down for kind in KINDS}
    for f in failures:
        down = downs.get(f.kind)
        yield SOURCE_DOWN.finding(
            down.severity if down else "warning", f.target, f"cannot read {f.kind} {f.target}",
            (f.error, down.meaning) if down else (f.error,),
            "Is it up and reachable with these credentials? The exporter keeps retrying; its "
            "other sources are not affected.")


# Where a check stands in the chain from a cause to what it causes (Check.role). A storm of
# Late runs or a pool left unserved is what people see first; what made them (a saturated
# database pool, a session holding locks) must come first in the report, whatever its severity.
# Symptoms come after the other findings of their severity.
ROOT_CAUSES = frozenset(check.id for check in CHECKS if check.role == ROOT)
SYMPTOMS = frozenset(check.id for check in CHECKS if check.role == SYMPTOM)


def rank(finding: Finding) -> tuple[int, int, int]:
    """Root causes first (the most severe first), then the rest by severity, symptoms last
    within theirs."""
    cause = finding.check in ROOT_CAUSES
    return (0 if cause else 1, SEVERITY_RANK[finding.severity],
            1 if finding.check in SYMPTOMS else 0)


def list_checks() -> str:
    """`doctor --list-checks`: every check, its severities and what it means, one a line."""
    rows = [(check.id, "/".join(check.severities), check.meaning)
            for check in sorted(CHECKS, key=lambda c: c.id)]
    width = [max(len(row[i]) for row in rows) for i in (0, 1)]
    return "".join(f"{id_:<{width[0]}}  {severities:<{width[1]}}  {meaning}\n"
                   for id_, severities, meaning in rows)


def diagnose(snapshots: Sequence[Snapshot], failures: Sequence[SourceFailure] = (),
             overrides: Mapping[str, float] | None = None) -> list[Finding]:
    """Every finding, in the order of rank()."""
    context = Context(thresholds(overrides), snapshots)
    found: list[Finding] = list(source_failures(failures))
    found += unreadable(failures, context)
    for kind in KINDS:
        for snapshot in snapshots:
            if kind.owns(snapshot):
                found += kind.diagnose(snapshot, context)
    return sorted(found, key=rank)


def to_confirm(findings: Sequence[Finding]) -> set[str]:
    """The targets of the findings that rest on one timing (Check.sampled)."""
    return {f.target for f in findings if BY_ID[f.check].sampled}


def confirmed(first: Sequence[Finding], second: Sequence[Finding]) -> list[Finding]:
    """The second diagnosis, less its findings on one timing that the first did not make too:
    what two polls in a row both found (the doctor's second look)."""
    seen = {(f.check, f.target) for f in first}
    return [f for f in second if not BY_ID[f.check].sampled or (f.check, f.target) in seen]
