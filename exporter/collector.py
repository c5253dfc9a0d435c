"""From the latest snapshots to the exposition text.

A custom prometheus_client Collector yields fresh families from the latest fresh snapshots, so a
label set that disappears (an application that went away) leaves no stale series. The text is
rendered once per poll, off the scrape path, so a scrape is a memory read whatever the targets do,
by exporter.exposition (generate_latest's output, at a fraction of its cost).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.exposition import render
from exporter.finding import Finding
from exporter.health import build_info, finding_family, health_families
from exporter.kinds import KINDS
from exporter.metricspec import MetricFamily, MetricOptions
from exporter.poller import SourceState
from exporter.process import ProcessMetrics
from exporter.source import Snapshot


class ExporterCollector(Collector):
    """The exporter's own metrics from the poller's states, and each kind's families from the
    snapshots and findings it was last given (update(), after every poll)."""

    def __init__(self, states: Sequence[SourceState], options: MetricOptions) -> None:
        self._states = states
        self._options = options
        self._snapshots: Sequence[Snapshot] = ()
        self._findings: Sequence[Finding] = ()

    def update(self, snapshots: Sequence[Snapshot], findings: Sequence[Finding]) -> None:
        self._snapshots, self._findings = snapshots, findings

    def collect(self) -> Iterator[Metric]:
        yield build_info()
        yield from health_families(self._states)
        yield finding_family(self._findings)
        yield from _merge(self._source_families())
        yield from self._verdicts()

    def target_families(self, target: str) -> Iterator[Metric]:
        """One target's metrics, for /probe: what its sources last read and the exporter's view
        of it (up, polls, errors, its findings). Exporter-wide series stay on /metrics, so a
        fleet scraped through /probe has no duplicates of them."""
        yield from health_families([s for s in self._states if s.target == target])
        yield finding_family(f for f in self._findings if f.target == target)
        yield from _merge(self._source_families(target))
        yield from self._verdicts(target)

    def _source_families(self, target: str | None = None) -> Iterator[Metric]:
        for snapshot in self._snapshots:
            if target is not None and snapshot.target != target:
                continue
            for kind in KINDS:
                if kind.owns(snapshot):
                    yield from kind.export(snapshot, self._options)
                    yield from kind.export_joined(snapshot, self._snapshots, self._options)

    def _verdicts(self, target: str | None = None) -> Iterator[Metric]:
        """Each kind's families made from the findings of its configured targets (all of them,
        also those whose poll failed: the doctor still judges them from the other layers)."""
        for kind in KINDS:
            targets = [s.target for s in self._states
                       if s.kind == kind.name and target in (None, s.target)]
            if targets:
                yield from kind.verdicts(targets, [f for f in self._findings
                                                   if f.target in targets])


def _merge(families: Iterable[Metric]) -> Iterator[Metric]:
    """One family per name: several targets of one kind each build their own."""
    merged: dict[str, Metric] = {}
    for metric in families:
        first = merged.setdefault(metric.name, metric)
        if first is metric:
            continue
        if isinstance(first, MetricFamily) != isinstance(metric, MetricFamily):
            # a MetricFamily's samples are built on reading: extending them would be lost
            raise TypeError(f"{metric.name}: families of one name must be of one class")
        if isinstance(first, MetricFamily) and isinstance(metric, MetricFamily):
            first.rows.extend(metric.rows)
        else:
            first.samples.extend(metric.samples)
    yield from merged.values()


class _OneTarget(Collector):
    def __init__(self, collector: ExporterCollector, target: str) -> None:
        self._collector, self._target = collector, target

    def collect(self) -> Iterator[Metric]:
        return self._collector.target_families(self._target)


class Exposition:
    """The latest rendered /metrics body, plain and gzipped, rendered after every poll.

    The process metrics (RSS, CPU, file descriptors) are rendered with it, so they are as
    fresh as the last poll: a scrape costs no /proc reads and no compression. A target's
    /probe body is rendered from the same snapshots on its first request after a poll, then
    served from memory until the next one."""

    def __init__(self, collector: ExporterCollector) -> None:
        self._collector = collector
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        self._registry.register(ProcessMetrics())
        self.body = b""
        self._gzipped: bytes | None = None
        self._probes: dict[str, bytes] = {}

    def render(self) -> None:
        self.body = render(self._registry.collect())
        self._gzipped = None
        self._probes = {}

    def probe(self, target: str) -> bytes:
        """One configured target's metrics (see ExporterCollector.target_families)."""
        if target not in self._probes:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_OneTarget(self._collector, target))
            self._probes[target] = render(registry.collect())
        return self._probes[target]

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzipped(self.body)
        return self._gzipped


def gzipped(body: bytes) -> bytes:
    """A body as served gzipped, /metrics and /probe alike (level 3)."""
    return gzip.compress(body, compresslevel=3)
