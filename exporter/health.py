"""The exporter's own metrics: build info, each source's health, and the diagnosis. Pure."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import Metric

from exporter import __version__
from exporter.finding import Finding
from exporter.kinds import KINDS
from exporter.metricspec import MetricSpec, Specs
from exporter.poller import SourceState
from exporter.source import REASONS

_ex = Specs("exporter")


BUILD_INFO = _ex("prefect_pg_exporter_build_info", "version python_version",
                 "Always 1; the exporter's version and Python version as labels.")
SOURCE_UP = _ex("prefect_pg_exporter_source_up", "source target",
                "1 if the last poll of this source succeeded, else 0.")
LAST_SUCCESS = _ex("prefect_pg_exporter_source_last_success_timestamp_seconds",
                   "source target",
                   "Unix time of the last successful poll (0 = never). Staleness: time() minus "
                   "this.")
POLL_DURATION = _ex("prefect_pg_exporter_source_poll_duration_seconds",
                    "source target",
                    "Wall time of the last poll of this source, successful or not.")
POLLS = _ex("prefect_pg_exporter_source_polls_total", "source target",
            "Polls attempted for this source.", "counter")
ERRORS = _ex("prefect_pg_exporter_source_errors_total", "source target reason",
             "Failed polls by reason: timeout, connect (cannot reach or log in), query, other.",
             "counter")
FINDING = _ex("prefect_pg_exporter_finding", "check severity",
              "1 while the diagnosis has an active finding of this check (the same as "
              "`prefect-pg-exporter doctor`); listed with evidence on the exporter's / page.")

SPECS: tuple[MetricSpec, ...] = (BUILD_INFO, SOURCE_UP, LAST_SUCCESS, POLL_DURATION, POLLS,
                                 ERRORS, FINDING)


def build_info() -> Metric:
    return BUILD_INFO.sample([__version__, platform.python_version()], 1)


def health_families(states: Sequence[SourceState]) -> Iterator[Metric]:
    up = SOURCE_UP.family()
    last = LAST_SUCCESS.family()
    duration = POLL_DURATION.family()
    polls = POLLS.family()
    errors = ERRORS.family()
    # each configured kind's plain `<kind>_up`
    configured = {s.kind for s in states}
    kind_up = {k.name: k.up.family() for k in KINDS if k.name in configured}
    for s in states:
        labels = [s.kind, s.target]
        up.add_metric(labels, 1 if s.up else 0)
        last.add_metric(labels, s.last_success)
        duration.add_metric(labels, s.last_duration)
        polls.add_metric(labels, s.polls)
        for reason in REASONS:  # every reason from the start, so rate() sees the first
            errors.add_metric([*labels, reason], s.errors[reason])
        kind_up[s.kind].add_metric([s.target], 1 if s.up else 0)
    yield from (up, last, duration, polls, errors, *kind_up.values())


def finding_family(findings: Iterable[Finding]) -> Metric:
    metric = FINDING.family()
    for check, severity in sorted({(f.check, f.severity) for f in findings}):
        metric.add_metric([check, severity], 1)
    return metric
