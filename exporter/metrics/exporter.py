"""The exporter's own metrics: build info and per-source health. Pure."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Sequence

from prometheus_client.core import Metric

from exporter import __version__
from exporter.catalogue import family
from exporter.poller import SourceState

# Each source kind also has a plain `<kind>_up`, the name users of other exporters look for.
UP_METRIC = {"postgres": "postgres_up", "pgbouncer": "pgbouncer_up", "prefect": "prefect_api_up"}
ERROR_REASONS = ("timeout", "connect", "query", "other")


def build_info() -> Metric:
    metric = family("prefect_pg_exporter_build_info")
    metric.add_metric([__version__, platform.python_version()], 1)
    return metric


def health_families(states: Sequence[SourceState]) -> Iterator[Metric]:
    up = family("prefect_pg_exporter_source_up")
    last = family("prefect_pg_exporter_source_last_success_timestamp_seconds")
    duration = family("prefect_pg_exporter_source_poll_duration_seconds")
    polls = family("prefect_pg_exporter_source_polls_total")
    errors = family("prefect_pg_exporter_source_errors_total")
    kind_up = {name: family(name) for kind, name in UP_METRIC.items()
               if any(s.kind == kind for s in states)}
    for s in states:
        labels = [s.kind, s.target]
        up.add_metric(labels, 1 if s.up else 0)
        last.add_metric(labels, s.last_success)
        duration.add_metric(labels, s.last_duration)
        polls.add_metric(labels, s.polls)
        for reason in ERROR_REASONS:  # every reason from the start, so rate() sees the first
            errors.add_metric([*labels, reason], s.errors[reason])
        kind_up[UP_METRIC[s.kind]].add_metric([s.target], 1 if s.up else 0)
    yield from (up, last, duration, polls, errors, *kind_up.values())
