"""One root, many symptoms: the findings that carry the same Cause (one PostgreSQL session)
gathered under it, so the doctor and the landing page name each root once, first, with what it
causes on every layer: blocked writers on PostgreSQL, waiting PgBouncer pools, a Prefect API
whose requests hang, and what that Prefect target shows meanwhile (Late runs, a backlog, a
slow or unreadable API). Pure: findings in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exporter.finding import SEVERITY_RANK, Cause, Finding

# What a Prefect target shows while its database work waits behind a root: attached to that
# root as "meanwhile" (the exporter sees them together; it does not prove each one).
PREFECT_MEANWHILE = ("api_slow", "api_waits_on_database", "source_down", "late_runs",
                     "scheduled_backlog", "work_pool_unserved", "late_runs_service_stalled",
                     "scheduler_stalled")
PREFECT_BLOCKED = "prefect_database_blocked"


@dataclass(frozen=True)
class Root:
    cause: Cause
    symptoms: tuple[Finding, ...]  # the findings that carry the cause, most severe first
    meanwhile: tuple[Finding, ...] = ()  # on a Prefect target it blocks, at the same time

    @property
    def severity(self) -> str:
        return min((f.severity for f in self.symptoms), key=SEVERITY_RANK.__getitem__)

    def summary(self) -> str:
        """What it causes, layer by layer, in one line each."""
        return "; ".join(f"{f.target}: {f.title}" for f in (*self.symptoms, *self.meanwhile))


def roots(findings: Sequence[Finding]) -> list[Root]:
    """Each cause once, the most severe first, then the one with the most symptoms."""
    by_cause: dict[tuple[str, int], list[Finding]] = {}
    causes: dict[tuple[str, int], Cause] = {}
    for f in findings:
        if f.cause is not None:
            causes.setdefault(f.cause.key, f.cause)
            by_cause.setdefault(f.cause.key, []).append(f)
    ranked = sorted((Root(causes[key], tuple(sorted(
        symptoms, key=lambda f: SEVERITY_RANK[f.severity]))) for key, symptoms in
        by_cause.items()), key=lambda r: (SEVERITY_RANK[r.severity], -len(r.symptoms),
                                           r.cause.key))
    # what a blocked Prefect target shows meanwhile goes with the first root that blocks it
    attached: set[int] = set()
    found = []
    for root in ranked:
        blocked = {f.target for f in root.symptoms if f.check == PREFECT_BLOCKED}
        meanwhile = tuple(f for f in findings if f.cause is None and f.target in blocked
                          and f.check in PREFECT_MEANWHILE and id(f) not in attached)
        attached |= {id(f) for f in meanwhile}
        found.append(Root(root.cause, root.symptoms, meanwhile))
    return found


def render_roots(found: Sequence[Root]) -> list[str]:
    """The doctor's text: the roots, before the findings."""
    if not found:
        return []
    lines = ["Root causes (each once, with what it causes):"]
    for i, root in enumerate(found, start=1):
        c = root.cause
        lines.append(f"R{i}. [{root.severity.upper()}] {c} on PostgreSQL {c.target}")
        lines += [f"     causes: {f.title}  ({f.check}, {f.target})" for f in root.symptoms]
        lines += [f"     meanwhile: {f.title}  ({f.check}, {f.target})" for f in root.meanwhile]
        lines.append(f"     do: SELECT pg_terminate_backend({c.pid}); on {c.target} if it must "
                     "not live on (its transaction rolls back)")
        lines.append("")
    return lines
