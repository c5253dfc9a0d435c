"""The doctor polls once; a finding that rests on one round trip's timing (Check.sampled) is kept
only when a second poll finds it again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from exporter import cli
from exporter.config import Config, load
from exporter.diagnosis import CHECKS, confirmed, diagnose, to_confirm
from exporter.finding import Finding
from exporter.prefect.snapshot import PrefectProbeSnapshot
from exporter.source import Snapshot
from tests.factories import pgbouncer_snapshot, prefect_probe
from tests.unit.test_checks import pool

NOW = 10_000.0
SLOW: dict[str, Any] = {"ready_seconds": 1.4, "health_seconds": 0.006}  # 1.4 s vs 6 ms


def _checks(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.check, f.target) for f in findings}


def test_the_api_timing_checks_are_the_sampled_ones() -> None:
    """Every check that judges the probe's round trips, and no other."""
    assert {c.id for c in CHECKS if c.sampled} == {
        c.id for c in CHECKS if any(t.startswith("api_") for t in c.thresholds)}


def test_a_slow_probe_once_is_dropped_and_twice_is_kept() -> None:
    slow = diagnose([prefect_probe(NOW, **SLOW)])
    calm = diagnose([prefect_probe(NOW + 1)])
    assert ("prefect_api_pool_saturated", "prefect") in _checks(slow)
    assert to_confirm(slow) == {"prefect"}
    assert confirmed(slow, calm) == calm == []
    again = diagnose([prefect_probe(NOW + 1, **SLOW)])
    assert confirmed(slow, again) == again != []


def test_a_finding_seen_only_in_the_second_poll_is_not_confirmed_but_the_rest_stays() -> None:
    """A pool with waiting clients (not a timing) stays from the second poll; a sampled finding
    that the first poll did not make is left out (one slow round trip either way)."""
    first = diagnose([prefect_probe(NOW), pgbouncer_snapshot((pool(0),), taken_at=NOW)])
    second = diagnose([prefect_probe(NOW + 1, **SLOW),
                       pgbouncer_snapshot((pool(3),), taken_at=NOW + 1)])
    assert to_confirm(first) == set()
    kept = confirmed(first, second)
    assert ("pgbouncer_pool_waiting", "pgb") in _checks(kept)
    assert not any(f.check.startswith("api_") for f in kept)
    assert ("api_waits_on_database", "prefect") in _checks(second)


class _ColdThenWarm:
    """A Prefect target whose first /api/ready is slow and the next ones fast: a cold pool's
    first connection. A fake, because a real server's first connection is slow by chance
    (514 ms once in CI against a 500 ms threshold), not on demand."""

    kind = "prefect"
    target = "prefect"

    def __init__(self, slow_polls: int) -> None:
        self.polls = 0
        self._slow_polls = slow_polls

    async def poll(self) -> Snapshot:
        self.polls += 1
        timing: dict[str, Any] = SLOW if self.polls <= self._slow_polls else {}
        return prefect_probe(NOW + self.polls, **timing)

    def partial(self) -> PrefectProbeSnapshot | None:
        return None

    async def close(self) -> None:
        pass


@pytest.fixture
def config() -> Config:
    return load({}, {"PREFECT_PG_EXPORTER_PREFECT_API_URL": "http://127.0.0.1:1/api"})


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[
        _ColdThenWarm]:
    cold = _ColdThenWarm(request.param)
    monkeypatch.setattr("exporter.app.build_sources", lambda config: [cold])
    yield cold


@pytest.mark.parametrize(("source", "exit_code", "polls", "says"), [
    (0, 0, 1, "No findings: nothing wrong"),  # calm at once: not polled again
    (1, 0, 2, "No findings: nothing wrong"),  # a cold pool, slow once: looked at again, calm
    (2, 1, 2, "Prefect's own database pool is saturated"),  # slow twice: reported
], indirect=["source"])
def test_the_doctor_looks_again_at_a_slow_probe(
        source: _ColdThenWarm, exit_code: int, polls: int, says: str, config: Config,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert asyncio.run(cli._doctor(config, "text")) == exit_code
    assert source.polls == polls
    assert says in capsys.readouterr().out
