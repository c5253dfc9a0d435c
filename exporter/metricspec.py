"""What a metric is: its name, type, labels and meaning. Each metric builder module declares the
specs it emits beside the code that emits them; exporter/catalogue.py gathers them into the one
catalogue that the docs, dashboards and alert tests are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

Kind = Literal["gauge", "counter"]
MetricFamily = GaugeMetricFamily | CounterMetricFamily


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the exposed sample name (a counter's ends in _total)
    kind: Kind
    help: str
    labels: tuple[str, ...]
    source: str  # exporter | postgres | pgbouncer | prefect

    def family(self) -> MetricFamily:
        """A fresh, empty family of this metric."""
        if self.kind == "counter":
            return CounterMetricFamily(self.name.removesuffix("_total"), self.help,
                                       labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


def spec(name: str, kind: Kind, source: str, labels: str, help_text: str) -> MetricSpec:
    """A spec with its labels written as one space-separated string."""
    return MetricSpec(name, kind, help_text, tuple(labels.split()), source)


@dataclass(frozen=True)
class MetricOptions:
    """What the builders need beyond a snapshot."""

    label_top_n: int  # values kept per label that comes from a target; the rest fold into other
