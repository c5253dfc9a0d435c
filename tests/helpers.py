"""Scraping and waiting helpers shared by the integration tests. Waiting is lab.waiting's
`eventually` (async) and `until` (blocking), re-exported here: the one way a test waits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from lab.waiting import eventually as eventually  # the one way a test waits (async)
from lab.waiting import until as until  # and blocking

if TYPE_CHECKING:
    from exporter.app import Exporter
    from exporter.config import Config


FAST_POLL = {"poll_interval_seconds": "0.25", "poll_timeout_seconds": "0.25"}
POLL_KEYS = ("poll_interval_seconds", "poll_timeout_seconds")


def load_for_test(settings: Mapping[str, str]) -> Config:
    """load() with the poll interval and timeout set afterwards: tests poll faster than the
    1 s a user may set, to finish in seconds (the floor is load()'s, for people)."""
    from exporter.config import load

    config = load({k: v for k, v in settings.items() if k not in POLL_KEYS}, environ={})
    interval = float(settings.get("poll_interval_seconds", config.poll_interval_seconds))
    timeout = float(settings.get("poll_timeout_seconds", min(interval, 10.0)))
    return replace(config, poll_interval_seconds=interval, poll_timeout_seconds=timeout)
# A Prefect poll is about fifty HTTP requests, each a query through PgBouncer: give it room,
# also on a loaded 2-core CI machine.
PREFECT_POLL = {"poll_interval_seconds": "3", "poll_timeout_seconds": "3"}

StartExporter = Callable[..., Awaitable["Exporter"]]


@dataclass(frozen=True)
class Scrape:
    """A parsed /metrics body: samples by name, each with its labels."""

    samples: list[tuple[str, dict[str, str], float]]
    text: str

    def values(self, metric: str, /, **labels: str) -> list[float]:
        return [v for n, lab, v in self.samples
                if n == metric and all(lab.get(k) == want for k, want in labels.items())]

    def find(self, metric: str, /, **labels: str) -> float | None:
        """The single sample matching, None when there is none; two matches is a test bug."""
        found = self.values(metric, **labels)
        assert len(found) <= 1, f"{metric}{labels} matches {len(found)} samples"
        return found[0] if found else None

    def value(self, metric: str, /, **labels: str) -> float:
        """The single sample matching; none is a failure that says which."""
        found = self.find(metric, **labels)
        assert found is not None, f"no sample {metric}{labels}"
        return found

    def labelsets(self, metric: str) -> list[dict[str, str]]:
        return [lab for n, lab, _ in self.samples if n == metric]

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


def parse(text: str) -> Scrape:
    samples = [(s.name, dict(s.labels), s.value)
               for fam in text_string_to_metric_families(text) for s in fam.samples]
    return Scrape(samples, text)


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(families: Iterable[Metric]) -> str:
    """Families rendered as prometheus_client renders them for /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode("utf-8", errors="strict")


def render(families: Iterable[Metric]) -> Scrape:
    """Families rendered and parsed back, as a scraper would see them."""
    return parse(exposition(families))


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    return parse(response.text)


async def wait_for(port: int, predicate: Callable[[Scrape], bool], what: str,
                   timeout: float = 15.0) -> Scrape:
    """Scrape until predicate(scrape) holds: that scrape."""
    last: list[Scrape] = []

    async def ok() -> bool:
        last[:] = [await scrape(port)]
        return predicate(last[0])

    await eventually(ok, timeout, what)
    return last[0]


async def wait_for_value(port: int, name: str, labels: Mapping[str, str], expected: float,
                         timeout: float = 15.0) -> Scrape:
    """Scrape until the sample equals expected; fail with the last value seen."""
    seen: list[float | None] = []

    def matches(s: Scrape) -> bool:
        seen[:] = [s.find(name, **labels)]
        return seen[0] == expected

    try:
        return await wait_for(port, matches, f"{name}{dict(labels)} == {expected}", timeout)
    except AssertionError:
        raise AssertionError(f"{name}{dict(labels)}: expected {expected}, last seen "
                             f"{seen[0] if seen else None}") from None
