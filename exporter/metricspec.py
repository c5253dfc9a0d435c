"""What a metric is: its name, type, labels and meaning. Each metric builder module declares the
specs it emits beside the code that emits them; exporter/catalogue.py gathers them into the one
catalogue that the docs, dashboards and alert tests are checked against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal, get_args

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

# A metric's type, as `# TYPE` says it. Not "kind": that word is the source kind's
# (postgres | pgbouncer | prefect | redis). A Literal, so mypy refuses a typo.
MetricType = Literal["gauge", "counter"]


_LABELS = itemgetter(0)  # a row's label values


class MetricFamily(Metric):
    """A family whose samples all carry its spec's label names, in the spec's order, kept as
    rows of label values: at thousands of series, a tuple each instead of a Sample and a dict.
    exporter.exposition renders the rows directly. `samples` builds prometheus_client's Sample
    objects for anything else that reads the family (generate_latest, the tests), as
    GaugeMetricFamily and CounterMetricFamily would hold them."""

    def __init__(self, name: str, documentation: str, metric_type: MetricType,
                 labelnames: tuple[str, ...]) -> None:
        # a counter's family is named without _total, its samples with it (as prometheus_client)
        counter = metric_type == "counter"
        family_name = name.removesuffix("_total") if counter else name
        super().__init__(family_name, documentation, metric_type)
        self.sample_name = family_name + "_total" if counter else name
        self.labelnames = labelnames
        self.rows: list[tuple[tuple[str, ...], float]] = []

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(labels)} label values for "
                             f"{len(self.labelnames)} labels {self.labelnames}")
        self.rows.append((tuple(labels), value))

    def add_rows(self, labels: Iterable[tuple[str, ...]], values: Iterable[float]) -> None:
        """Many rows at once, label values paired with values in C: for the families of
        thousands of series (a call of add_metric() per row was most of their cost)."""
        start = len(self.rows)
        self.rows.extend(zip(labels, values, strict=True))
        if set(map(len, map(_LABELS, self.rows[start:]))) - {len(self.labelnames)}:
            del self.rows[start:]
            raise ValueError(f"{self.name}: rows without {len(self.labelnames)} label values "
                             f"for {self.labelnames}")

    @property
    def samples(self) -> list[Sample]:
        return [Sample(self.sample_name, dict(zip(self.labelnames, labels, strict=True)), value)
                for labels, value in self.rows]

    @samples.setter
    def samples(self, value: Any) -> None:
        if value:  # Metric.__init__ sets it empty; rows are added with add_metric
            raise AttributeError("add rows with add_metric()")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the exposed sample name (a counter's ends in _total)
    type: MetricType
    help: str
    labels: tuple[str, ...]
    source: str  # exporter | postgres | pgbouncer | prefect | redis

    def __post_init__(self) -> None:
        # refused at import, so a wrong type never reaches an exposition or the catalogue
        if self.type not in get_args(MetricType):
            raise ValueError(f"{self.name}: unknown metric type {self.type!r}")
        if (self.type == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: a counter's name ends in _total, only a counter's")

    def family(self) -> MetricFamily:
        """A fresh, empty family of this metric."""
        return MetricFamily(self.name, self.help, self.type, self.labels)

    def sample(self, labels: Sequence[str], value: float) -> MetricFamily:
        """A family of this metric holding one sample: a target's single value."""
        family = self.family()
        family.add_metric(labels, value)
        return family


@dataclass(frozen=True)
class Specs:
    """The one way a metric spec is declared: `_pg = Specs("postgres")`, then
    `_pg(name, labels, help_text)` for a gauge or `_pg(..., metric_type="counter")`. Labels are
    written as one space-separated string."""

    source: str  # exporter | postgres | pgbouncer | prefect | redis

    def __call__(self, name: str, labels: str, help_text: str,
                 metric_type: MetricType = "gauge") -> MetricSpec:
        return MetricSpec(name, metric_type, help_text, tuple(labels.split()), self.source)


@dataclass(frozen=True)
class MetricOptions:
    """What the builders need beyond a snapshot."""

    label_top_n: int  # values kept per label that comes from a target; the rest fold into other
