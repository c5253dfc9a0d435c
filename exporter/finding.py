"""What the diagnosis says: findings, each with its evidence and what to do, and the context the
checks read. The checks themselves live with their source kind (exporter/<kind>/checks.py) and
are pure: snapshots and thresholds in, findings out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from exporter.source import Snapshot
from exporter.thresholds import Thresholds

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}

T = TypeVar("T")


@dataclass(frozen=True)
class Cause:
    """The session at the root of what a finding reports: a backend of a PostgreSQL target
    that holds what others wait for. Findings on every layer (the lock chain on PostgreSQL, a
    PgBouncer pool whose clients wait, a Prefect API whose requests hang) carry the same Cause
    when one session explains them, so the diagnosis names it once with all it causes."""

    target: str  # the PostgreSQL target the session is on
    pid: int
    application_name: str
    state: str  # pg_stat_activity.state: idle in transaction, active, ...
    transaction_seconds: float | None  # its transaction's age; None: unknown or none
    relation: str = ""  # the table its victims wait on, when known

    @property
    def key(self) -> tuple[str, int]:
        return self.target, self.pid

    def __str__(self) -> str:
        parts = [self.application_name or "no application_name", self.state]
        if self.transaction_seconds is not None:
            parts.append(f"transaction {age(self.transaction_seconds)}")
        return (f"pid {self.pid} ({', '.join(parts)})"
                + (f" on {self.relation}" if self.relation else ""))


@dataclass(frozen=True)
class Finding:
    check: str  # a stable identifier, also the metric label
    severity: str  # critical | warning | info
    target: str
    title: str
    evidence: tuple[str, ...]
    action: str
    cause: Cause | None = None  # the session that causes it, when the exporter can tell

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Where a check stands in the chain from a cause to what it causes (exporter/diagnosis.rank):
# a root cause is listed first whatever its severity; a symptom after the other findings of its
# severity; the rest by severity alone.
ROOT = "root"
SYMPTOM = "symptom"


@dataclass(frozen=True)
class Check:
    """One check of the diagnosis, declared once beside the code that makes its findings
    (exporter/<kind>/checks.py lists its kind's in CHECKS; exporter/diagnosis.CHECKS gathers
    them): its id (the findings' `check`, the metric label, an alert's `check`, an incident's
    kind), the severities it reports (the most severe first), what it means in one line
    (`doctor --list-checks`), the thresholds it reads, its place in the chain from a cause to
    its symptoms, whether it is also an incident, and whether it rests on one timing."""

    id: str
    severities: tuple[str, ...]
    meaning: str
    thresholds: tuple[str, ...] = ()
    role: str = ""  # ROOT | SYMPTOM | "" (ranked by severity alone)
    # its kind's incidents observe it too, on the same condition (exporter/<kind>/incidents.py)
    incident: bool = False
    # judged on one round trip's timing, which a cold connection or a busy moment makes slow
    # once: the doctor, which polls once, keeps it only when a second poll finds it again
    sampled: bool = False

    def finding(self, severity: str, target: str, title: str, evidence: tuple[str, ...],
                action: str, cause: Cause | None = None) -> Finding:
        if severity not in self.severities:  # a check reports what it declares
            raise ValueError(f"{self.id}: {severity} is not one of {self.severities}")
        return Finding(self.id, severity, target, title, evidence, action, cause)


@dataclass(frozen=True)
class SourceFailure:
    kind: str
    target: str
    error: str


@dataclass(frozen=True)
class Context:
    """What every check may read besides its own snapshot: the thresholds (resolved: the
    defaults with the overrides given, once per poll) and the other fresh
    snapshots (the connection budget reads Prefect's pool sizes, the statement-cache check
    PgBouncer's pool modes)."""

    thresholds: Thresholds
    snapshots: Sequence[Snapshot] = ()

    def of(self, kind: type[T]) -> list[T]:
        return [s for s in self.snapshots if isinstance(s, kind)]


def age(seconds: float | None) -> str:
    """A duration as people say it: 45s, 7min, 2.5h."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when nothing is wrong (info only), 1 on warnings, 2 on critical findings."""
    severities = {f.severity for f in findings}
    return 2 if "critical" in severities else 1 if "warning" in severities else 0


def render_text(findings: Sequence[Finding]) -> str:
    if not findings:
        return "No findings: nothing wrong seen in the configured targets.\n"
    from exporter.roots import render_roots, roots  # roots builds on Finding

    found = roots(findings)
    numbers = {root.cause.key: i for i, root in enumerate(found, start=1)}
    lines = render_roots(found)
    for i, f in enumerate(findings, start=1):
        lines.append(f"{i}. [{f.severity.upper()}] {f.title}  ({f.check}, {f.target})")
        if f.cause is not None:
            lines.append(f"     root: R{numbers[f.cause.key]} (pid {f.cause.pid} on "
                         f"{f.cause.target})")
        lines += [f"     evidence: {e}" for e in f.evidence]
        lines.append(f"     do: {f.action}")
        lines.append("")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITY_RANK}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines) + "\n"
