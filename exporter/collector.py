"""From the latest snapshots to the exposition text.

A custom prometheus_client Collector yields fresh families from the latest snapshots, so a label
set that disappears (an application that went away) leaves no stale series. The text is rendered
once per poll, off the scrape path, so a scrape is a memory read whatever the targets do.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exporter.catalogue import family
from exporter.findings import Finding
from exporter.metrics.exporter import build_info, health_families
from exporter.metrics.pgbouncer import pgbouncer_families
from exporter.metrics.postgres import postgres_families
from exporter.metrics.prefect import prefect_families
from exporter.poller import SourceState


@dataclass(frozen=True)
class MetricOptions:
    label_top_n: int
    stale_after_seconds: float  # a snapshot older than this is no longer exported


FamiliesOf = Callable[[object, str, MetricOptions], Iterator[Metric]]

FAMILIES: dict[str, FamiliesOf] = {
    "postgres": lambda snap, target, opts: postgres_families(
        snap, target, opts.label_top_n),  # type: ignore[arg-type]
    "pgbouncer": lambda snap, target, opts: pgbouncer_families(
        snap, target, opts.label_top_n),  # type: ignore[arg-type]
    "prefect": lambda snap, target, opts: prefect_families(snap, target),  # type: ignore[arg-type]
}


class ExporterCollector(Collector):
    def __init__(self, states: Sequence[SourceState], options: MetricOptions,
                 clock: Callable[[], float] = time.time) -> None:
        self._states = states
        self._options = options
        self._clock = clock
        self.findings: list[Finding] = []  # set by the exporter before each render

    def collect(self) -> Iterator[Metric]:
        yield build_info()
        yield from health_families(self._states)
        yield finding_family(self.findings)
        yield from _merge(self._source_families())

    def _source_families(self) -> Iterator[Metric]:
        now = self._clock()
        for state in self._states:
            snap = state.snapshot
            # Keep serving a recent snapshot through a failed poll or two, so one timeout in
            # the middle of an incident does not reset every alert's `for:`; but never export
            # data older than stale_after as if it were current.
            if snap is None or now - snap.taken_at > self._options.stale_after_seconds:  # type: ignore[attr-defined]
                continue
            yield from FAMILIES[state.kind](snap, state.target, self._options)


def finding_family(findings: Sequence[Finding]) -> Metric:
    metric = family("prefect_pg_exporter_finding")
    for check, severity in sorted({(f.check, f.severity) for f in findings}):
        metric.add_metric([check, severity], 1)
    return metric


def _merge(families: Iterator[Metric]) -> Iterator[Metric]:
    """One family per name: several targets of one kind each build their own."""
    merged: dict[str, Metric] = {}
    for metric in families:
        if metric.name in merged:
            merged[metric.name].samples.extend(metric.samples)
        else:
            merged[metric.name] = metric
    yield from merged.values()


class Exposition:
    """The latest rendered /metrics body, plain and gzipped, rendered after every poll.

    The process metrics (RSS, CPU, file descriptors) are rendered with it, so they are as
    fresh as the last poll: a scrape costs no /proc reads and no compression."""

    def __init__(self, collector: Collector) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        ProcessCollector(registry=self._registry)
        self.body = b""
        self._gzipped: bytes | None = None

    def render(self) -> None:
        self.body = generate_latest(self._registry)
        self._gzipped = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=3)
        return self._gzipped
