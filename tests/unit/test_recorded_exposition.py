"""The exposition of a recorded snapshot set, byte for byte: a refactoring that changes what users
scrape fails here. Regenerate deliberately (a metric added or changed on purpose) with
`.venv/bin/python -m tests.unit.test_recorded_exposition`."""

from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import ExporterCollector, MetricOptions
from exporter.findings import diagnose, render_text, snapshots_from
from exporter.poller import SourceState
from tests.factories import rich_pgbouncer, rich_postgres, rich_prefect

GOLDEN = Path(__file__).parent / "golden" / "exposition.prom"
GOLDEN_DOCTOR = Path(__file__).parent / "golden" / "doctor.txt"
NOW = 1_700_000_000.0


class _Named:
    def __init__(self, kind: str, target: str) -> None:
        self.kind, self.target = kind, target


def _state(kind: str, target: str, snapshot: Any, up: bool = True, **errors: int) -> SourceState:
    state = SourceState(_Named(kind, target))  # type: ignore[arg-type]
    state.snapshot, state.up, state.polls = snapshot, up, 7
    state.last_success, state.last_duration = NOW - 2.0, 0.125
    state.errors = Counter(errors)
    if not up:
        state.last_error = "cannot connect to db2:5432/prefect: connection refused"
    return state


def recorded_states() -> list[SourceState]:
    return [
        _state("postgres", "db", rich_postgres(NOW - 1.0)),
        _state("postgres", "db2", rich_postgres(NOW - 1.5), up=False, connect=3),
        _state("pgbouncer", "pgb", rich_pgbouncer(NOW - 1.0), timeout=1),
        _state("prefect", "prefect", rich_prefect(NOW - 1.0)),
        _state("prefect", "stale", rich_prefect(NOW - 1000.0)),
    ]


def recorded_exposition() -> str:
    states = recorded_states()
    options = MetricOptions(label_top_n=20, stale_after_seconds=45.0)
    collector = ExporterCollector(states, options, clock=lambda: NOW)
    collector.findings = diagnose(snapshots_from(states, 45.0, NOW))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return text.replace(f'python_version="{platform.python_version()}"', 'python_version="X"')


def test_exposition_of_the_recorded_snapshots_is_unchanged() -> None:
    assert recorded_exposition() == GOLDEN.read_text(), \
        "the exposition changed: if on purpose, regenerate (see this module's docstring)"


def recorded_doctor() -> str:
    states = recorded_states()
    return render_text(diagnose(snapshots_from(states, 45.0, NOW)))


def test_doctor_report_of_the_recorded_snapshots_is_unchanged() -> None:
    assert recorded_doctor() == GOLDEN_DOCTOR.read_text(), \
        "the doctor's report changed: if on purpose, regenerate (see this module's docstring)"


if __name__ == "__main__":
    GOLDEN.write_text(recorded_exposition())
    GOLDEN_DOCTOR.write_text(recorded_doctor())
