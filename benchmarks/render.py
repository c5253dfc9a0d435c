"""What rendering /metrics costs with thousands of series: exporter.exposition.render against
prometheus_client's generate_latest on the same collected families, in one run.

    benchmarks/run render [--backends 100 1000 2000 5000] [--rounds 30]

Needs no server. At each size, a PostgreSQL snapshot as benchmarks/bench.py's backends make it
(every backend its own application_name, 5% idle in transaction, 5% active in pg_sleep), every
application kept as its own series (label_top_n 10,000), with findings and the process metrics:
what the exporter renders after each poll. The families are collected once per round and
rendered by both, interleaved: ours from the exporter's families (rows of label values),
generate_latest from the same families with their Sample objects built beforehand, as
prometheus_client's families hold them. Printed: the median CPU time of each and the ratio.
Building the families is not timed here (benchmarks/run compare times a whole poll).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from exporter.collector import ExporterCollector
from exporter.diagnosis import diagnose
from exporter.exposition import render
from exporter.metricspec import MetricOptions
from exporter.poller import SourceState
from exporter.postgres.snapshot import ActivityGroup, PostgresSnapshot
from exporter.process import ProcessMetrics
from tests.factories import NamedSource, group, pg_snapshot


def snapshot(backends: int) -> PostgresSnapshot:
    groups: list[ActivityGroup] = []
    for i in range(backends):
        if i % 20 == 0:
            groups.append(group(app=f"bench-{i}", state="idle in transaction",
                                max_transaction_age=5.0, max_state_age=5.0))
        elif i % 20 == 1:
            groups.append(group(app=f"bench-{i}", state="active", wait_event_type="Timeout",
                                wait_event="PgSleep", max_transaction_age=3.0, max_state_age=3.0))
        else:
            groups.append(group(app=f"bench-{i}"))
    return pg_snapshot(*groups, taken_at=time.time(), max_connections=backends + 100)


def registry_for(backends: int) -> CollectorRegistry:
    snap = snapshot(backends)
    state = SourceState(NamedSource("postgres", "db"), snapshot=snap, up=True,
                        last_success=time.time(), polls=1)
    collector = ExporterCollector([state], MetricOptions(label_top_n=10_000))
    collector.update([snap], diagnose([snap]))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    registry.register(ProcessMetrics())  # the exporter's process metrics
    return registry


def as_samples(families: list[Metric]) -> list[Metric]:
    """The families as prometheus_client's own would hold them, Sample objects already built
    (as GaugeMetricFamily.add_metric builds them), so that generate_latest is timed alone."""
    plain = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type)
        copy.samples = list(family.samples)
        plain.append(copy)
    return plain


def cpu(fn: Callable[[], object]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, nargs="+", default=[100, 1000, 2000, 5000])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"Rendering /metrics: exporter.exposition.render vs prometheus_client generate_latest "
          f"on the same families, median CPU of {args.rounds} interleaved rounds")
    for backends in args.backends:
        registry = registry_for(backends)
        families = list(registry.collect())
        ours_body = render(families)
        theirs_body = generate_latest(_Fixed(as_samples(families)))
        series = sum(1 for line in ours_body.splitlines() if not line.startswith(b"#"))
        same = "byte-equal" if ours_body == theirs_body else "OUTPUTS DIFFER"
        ours, theirs = [], []
        for _ in range(args.rounds):
            collected = list(registry.collect())
            theirs.append(cpu(partial(generate_latest, _Fixed(as_samples(collected)))))
            ours.append(cpu(partial(render, collected)))
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"  {backends:>5} backends, {series:>6} series ({len(ours_body) / 1024:6.0f} KiB, "
              f"{same}): ours {o * 1000:7.2f} ms, generate_latest {t * 1000:7.2f} ms, "
              f"ratio {o / t:.3f}x")


class _Fixed(CollectorRegistry):
    """A registry that yields families already collected, so both render the same input."""

    def __init__(self, families: list[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


if __name__ == "__main__":
    main()
