"""exporter.exposition.render is generate_latest, byte for byte, only cheaper: on every family the
exporter builds from the recorded snapshots (with the process metrics), on every metric type
prometheus_client knows, and on names, values and help texts that need escaping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter.exposition import render
from exporter.postgres.metrics import CONNECTIONS, TABLE_INSERTED
from exporter.process import ProcessMetrics
from tests.unit.test_recorded_exposition import recorded_registry


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _both(families: list[Metric]) -> tuple[bytes, bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return render(registry.collect()), generate_latest(registry)


def test_every_family_the_exporter_builds_renders_as_generate_latest_does() -> None:
    registry = recorded_registry()
    registry.register(ProcessMetrics())  # the exporter's process metrics
    # collected once, rendered twice: the process metrics change between two collections
    ours, theirs = _both(list(registry.collect()))
    assert ours == theirs
    assert ours.count(b"\n") > 300  # the recorded set is rich: hundreds of lines compared


def _every_type() -> list[Metric]:
    counter = CounterMetricFamily("jobs", "Jobs done.", labels=["queue"], created=None)
    counter.add_metric(["a"], 3, created=1_700_000_000.5)
    counter.add_metric(["b"], 0.1 + 0.2, timestamp=1_700_000_001.25)
    info = InfoMetricFamily("build", "Build.", value={"version": "1.2", "commit": "abc"})
    hist = HistogramMetricFamily("latency_seconds", "Latency.", labels=["path"])
    hist.add_metric(["/"], [("0.1", 1), ("+Inf", 4)], sum_value=2.5)
    ghist = GaugeHistogramMetricFamily("queue_age", "Age.", buckets=[("1.0", 2), ("+Inf", 3)],
                                       gsum_value=7)
    summary = SummaryMetricFamily("size_bytes", "Size.", count_value=4, sum_value=1e9)
    stateset = StateSetMetricFamily("mode", "Mode.", value={"on": True, "off": False})
    unknown = UnknownMetricFamily("odd", "Odd.", value=float("nan"))
    gauge = GaugeMetricFamily("g", "G.", labels=["z", "a", "m"])
    for values, value in ((["1", "2", "3"], float("inf")), (["", "x", "y"], float("-inf")),
                          (["4", "5", "6"], 123456789.0), (["7", "8", "9"], -0.0)):
        gauge.add_metric(values, value)
    return [counter, info, hist, ghist, summary, stateset, unknown, gauge]


def test_every_metric_type_renders_as_generate_latest_does() -> None:
    ours, theirs = _both(_every_type())
    assert b"_created" in ours and b"_gsum" in ours  # the OpenMetrics-only samples are there
    assert ours == theirs


@pytest.mark.parametrize("value", ['say "hi"', "back\\slash", "two\nlines", "100%s %d",
                                   "ünïcödé ✓", "{}", ""])
def test_label_values_are_escaped_as_generate_latest_does(value: str) -> None:
    gauge = GaugeMetricFamily("g", 'Help with \\ and\nnewline and "quotes".', labels=["v"])
    gauge.add_metric([value], 1)
    ours, theirs = _both([gauge])
    assert ours == theirs
    # the exporter's own families, rendered from their rows: one label, and several
    rows = CONNECTIONS.family()
    rows.add_metric(["db", value, "prefect", value, "idle"], 2)
    rows.add_metric(["db", "plain", "prefect", "app", "idle"], 3)
    ours, theirs = _both([rows])
    assert ours == theirs


def test_names_outside_the_legacy_character_set_are_escaped_as_generate_latest_does() -> None:
    gauge = GaugeMetricFamily("odd.name", "Odd.", labels=["dotted.label", "ok", "ütf"])
    gauge.add_metric(["1", "2", "3"], 1)
    empty = GaugeMetricFamily("empty", "No samples.")
    ours, theirs = _both([gauge, empty])
    assert ours == theirs


def test_samples_with_the_same_names_in_another_order_share_nothing_wrongly() -> None:
    gauge = GaugeMetricFamily("g", "G.")
    gauge.samples.append(Sample("g", {"b": "1", "a": "2"}, 1.0))
    gauge.samples.append(Sample("g", {"a": "3", "b": "4"}, 2.0))
    ours, theirs = _both([gauge])
    assert ours == theirs
    assert b'g{a="2",b="1"} 1.0' in ours and b'g{a="3",b="4"} 2.0' in ours


def test_values_that_compare_equal_but_print_differently_keep_their_own_text() -> None:
    # the renderer remembers each value's text within a render: 0.0 and -0.0 are one dict key
    gauge = GaugeMetricFamily("g", "G.", labels=["i"])
    for i, value in enumerate([0.0, -0.0, 0, 1, 1.0, True, float("nan"), float("nan"),
                               1e21, 1234567.0, -1234567.0, 0.1]):
        gauge.add_metric([str(i)], value)
    ours, theirs = _both([gauge])
    assert b'g{i="1"} -0.0' in ours
    assert ours == theirs


def test_a_family_refuses_rows_that_do_not_match_its_labels() -> None:
    family = CONNECTIONS.family()
    with pytest.raises(ValueError, match="label values"):
        family.add_metric(["db", "prefect"], 1)


def test_a_counter_family_names_its_samples_with_total_as_prometheus_client_does() -> None:
    ours = TABLE_INSERTED.family()
    theirs = CounterMetricFamily(TABLE_INSERTED.name, TABLE_INSERTED.help,
                                 labels=TABLE_INSERTED.labels)
    for family in (ours, theirs):
        family.add_metric(["db", "public", "flow_run"], 12)
    assert (ours.name, ours.type, ours.samples) == (theirs.name, theirs.type, theirs.samples)
    assert _both([ours]) == (_both([theirs])[1],) * 2
