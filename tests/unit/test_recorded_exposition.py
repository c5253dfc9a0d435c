"""The exposition of a recorded snapshot set, byte for byte: a refactoring that changes what users
scrape fails here. Regenerate deliberately (a metric added or changed on purpose) with
`.venv/bin/python -m tests.unit.test_recorded_exposition`."""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.collector import ExporterCollector
from exporter.diagnosis import diagnose
from exporter.exposition import render
from exporter.finding import render_text
from exporter.metricspec import MetricOptions
from exporter.poller import SourceState, failures, fresh_snapshots
from exporter.source import Reason, Snapshot
from tests.factories import (
    NamedSource,
    prefect_probe,
    rich_pgbouncer,
    rich_postgres,
    rich_prefect,
    rich_redis,
)

GOLDEN = Path(__file__).parent / "golden" / "exposition.prom"
GOLDEN_DOCTOR = Path(__file__).parent / "golden" / "doctor.txt"
NOW = 1_700_000_000.0


def _state(kind: str, target: str, snapshot: Snapshot | None, up: bool = True,
           errors: Mapping[Reason, int] | None = None, error: str = "") -> SourceState:
    state = SourceState(NamedSource(kind, target))
    state.snapshot, state.up, state.polls = snapshot, up, 7
    state.last_success, state.last_duration = NOW - 2.0, 0.125
    state.errors = Counter(errors or {})
    if not up:
        state.last_error = error or "cannot connect to db2:5432/prefect: connection refused"
    return state


def recorded_states() -> list[SourceState]:
    return [
        _state("postgres", "db", rich_postgres(NOW - 1.0, "db")),
        # its last poll failed: nothing of it is shown (a PostgreSQL poll has no partial result)
        _state("postgres", "db2", None, up=False, errors={"connect": 3}),
        _state("pgbouncer", "pgb", rich_pgbouncer(NOW - 1.0, "pgb"), errors={"timeout": 1}),
        _state("prefect", "prefect", rich_prefect(NOW - 1.0, "prefect")),
        _state("prefect", "stale", rich_prefect(NOW - 1000.0, "stale")),
        # its last poll timed out after the probe: the probe is shown, nothing else
        _state("prefect", "timedout", prefect_probe(NOW - 3.0, "timedout", ready_seconds=1.4,
                                                    health_seconds=0.006, ready_failures=2),
               up=False, errors={"timeout": 2}, error="poll took longer than 5s"),
        _state("redis", "messaging", rich_redis(NOW - 1.0, "messaging")),
    ]


def recorded_registry() -> CollectorRegistry:
    """The exporter's collector over the recorded states, after a diagnosis, as served."""
    states = recorded_states()
    snapshots = fresh_snapshots(states, NOW, 45.0)
    collector = ExporterCollector(states, MetricOptions(label_top_n=20))
    collector.update(snapshots, diagnose(snapshots, failures(states)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def recorded_exposition() -> str:
    """What /metrics serves for the recorded states (the exporter's renderer, which
    tests/unit/test_exposition.py holds to generate_latest's output)."""
    text = render(recorded_registry().collect()).decode()
    return text.replace(f'python_version="{platform.python_version()}"', 'python_version="X"')


def test_exposition_of_the_recorded_snapshots_is_unchanged() -> None:
    assert recorded_exposition() == GOLDEN.read_text(), \
        "the exposition changed: if on purpose, regenerate (see this module's docstring)"


def recorded_doctor() -> str:
    states = recorded_states()
    return render_text(diagnose(fresh_snapshots(states, NOW, 45.0), failures(states)))


def test_doctor_report_of_the_recorded_snapshots_is_unchanged() -> None:
    assert recorded_doctor() == GOLDEN_DOCTOR.read_text(), \
        "the doctor's report changed: if on purpose, regenerate (see this module's docstring)"


if __name__ == "__main__":
    GOLDEN.write_text(recorded_exposition())
    GOLDEN_DOCTOR.write_text(recorded_doctor())
