"""The Prometheus text format, rendered for families whose label names are fixed.

prometheus_client's generate_latest() validates and escapes every label name of every sample
(`escape_label_name`, a regular expression each time) and formats each pair on its own: with
thousands of series, most of a render. Here each family's label names are escaped and sorted
once and become a format string; a row only escapes its values (each distinct value once per
render). The exporter's own families (exporter.metricspec.MetricFamily) are rendered from their
rows of label values; any other family (the process metrics) from its samples, the same way.
The output is byte-for-byte generate_latest's (tests/unit/test_exposition.py compares them on
every family the exporter builds, and on names and values that need escaping).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import cast

from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import (
    UNDERSCORES,
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.utils import floatToGoString as _untyped_go_float

from exporter.metricspec import MetricFamily

# OpenMetrics-only samples, which the text format puts in a gauge of their own after the family.
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")

# The text format's names for OpenMetrics types, and the suffix its name takes.
_TEXT_TYPE = {"counter": ("counter", "_total"), "info": ("gauge", "_info"),
              "stateset": ("gauge", ""), "gaugehistogram": ("histogram", ""),
              "unknown": ("untyped", "")}


class _LabelFormats:
    """Per set of label names (in the order a sample holds them): the names sorted as
    generate_latest sorts them, and a %-format string with each escaped name in place."""

    def __init__(self) -> None:
        self._formats: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}

    def get(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
        found = self._formats.get(names)
        if found is None:
            ordered = tuple(sorted(names))
            # an escaped name holds no "%" (UNDERSCORES escaping keeps [a-zA-Z0-9_] only)
            pairs = ",".join(f'{escape_label_name(n, UNDERSCORES)}="%s"' for n in ordered)
            found = self._formats[names] = (ordered, "{" + pairs + "}")
        return found


class _EscapedValues(dict[str, str]):
    """Label values escaped as the text format wants, each distinct value once per render
    (databases, roles and states repeat on every series)."""

    def __missing__(self, value: str) -> str:
        escaped = self[value] = (value.replace("\\", r"\\").replace("\n", r"\n")
                                 .replace('"', r"\""))
        return escaped


# prometheus_client's Go formatting of a float, typed (it is not, there)
_go_float = cast(Callable[[float], str], _untyped_go_float)


class _GoFloats(dict[float, str]):
    """Sample values as the text format writes them (Go's float formatting), each distinct
    value once per render: counts of 0 and 1 fill most series."""

    def __missing__(self, value: float) -> str:
        text = _go_float(value)
        if value != 0:  # 0.0 and -0.0 are one key, but print differently
            self[value] = text
        return text


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _samples(metric: Metric, formats: _LabelFormats, values: _EscapedValues,
             floats: _GoFloats, output: list[str]) -> dict[str, list[str]]:
    """Appends the family's sample lines to output; returns the OpenMetrics-only ones, which
    the text format puts after the family, by suffix. The loop every sample goes through."""
    openmetrics_only: dict[str, list[str]] = {}
    suffix_of = {metric.name + s: s for s in _OPENMETRICS_SUFFIXES}
    escaped_names: dict[str, str] = {}
    get_format, escape, go, append = (formats.get, values.__getitem__, floats.__getitem__,
                                      output.append)
    for sample in metric.samples:
        name, labels, value, timestamp = sample[0], sample[1], sample[2], sample[3]
        escaped = escaped_names.get(name)
        if escaped is None:
            escaped = escaped_names[name] = escape_metric_name(name, UNDERSCORES)
        if labels:
            ordered, fmt = get_format(tuple(labels))
            escaped += fmt % tuple(map(escape, map(labels.__getitem__, ordered)))
        if timestamp is None:
            line = f"{escaped} {go(value)}\n"
        else:
            line = f"{escaped} {go(value)} {int(float(timestamp) * 1000):d}\n"
        om_suffix = suffix_of.get(name)
        if om_suffix is None:
            append(line)
        else:
            openmetrics_only.setdefault(om_suffix, []).append(line)
    return openmetrics_only


def _rows(family: MetricFamily, formats: _LabelFormats, values: _EscapedValues,
          floats: _GoFloats, output: list[str]) -> None:
    """Appends the lines of a family kept as rows: the label names, their order and their
    escaping are the family's, decided once for all its rows."""
    name = escape_metric_name(family.sample_name, UNDERSCORES)
    escape, go, append = values.__getitem__, floats.__getitem__, output.append
    names = family.labelnames
    if not names:
        for _, value in family.rows:
            append(f"{name} {go(value)}\n")
        return
    ordered, labels_fmt = formats.get(names)
    order = [names.index(n) for n in ordered]  # where each sorted name sits in a row
    fmt = name + labels_fmt
    pick = itemgetter(*order) if len(order) > 1 else lambda labels: (labels[0],)
    for labels, value in family.rows:
        raw = pick(labels)
        joined = "".join(raw)  # one scan for the three characters that need escaping
        if '"' in joined or "\\" in joined or "\n" in joined:
            raw = tuple(map(escape, raw))
        append(f"{fmt % raw} {go(value)}\n")


def render(metrics: Iterable[Metric]) -> bytes:
    """The families in the Prometheus text format, as generate_latest(registry) renders them."""
    formats = _LabelFormats()
    values = _EscapedValues()
    floats = _GoFloats()
    output: list[str] = []
    for metric in metrics:
        text_type, suffix = _TEXT_TYPE.get(metric.type, (metric.type, ""))
        name = escape_metric_name(metric.name + suffix, UNDERSCORES)
        documentation = _help(metric.documentation)
        output.append(f"# HELP {name} {documentation}\n# TYPE {name} {text_type}\n")
        if isinstance(metric, MetricFamily):
            _rows(metric, formats, values, floats, output)
            continue
        openmetrics_only = _samples(metric, formats, values, floats, output)
        for om_suffix, lines in sorted(openmetrics_only.items()):
            om_name = escape_metric_name(metric.name + om_suffix, UNDERSCORES)
            output.append(f"# HELP {om_name} {documentation}\n# TYPE {om_name} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")
