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

import functools
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


# Names, label names and help texts are the catalogue's (and the process metrics'): a fixed set,
# so what is made of them is made once for the process, not on every render. The caches are
# bounded all the same.
_ONCE = functools.lru_cache(maxsize=4096)


@_ONCE
def _label_format(names: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """Per set of label names (in the order a sample holds them): the names sorted as
    generate_latest sorts them, and a %-format string with each escaped name in place."""
    ordered = tuple(sorted(names))
    # an escaped name holds no "%" (UNDERSCORES escaping keeps [a-zA-Z0-9_] only)
    pairs = ",".join(f'{escape_label_name(n, UNDERSCORES)}="%s"' for n in ordered)
    return ordered, "{" + pairs + "}"


@_ONCE
def _escaped_name(name: str) -> str:
    return escape_metric_name(name, UNDERSCORES)


@_ONCE
def _header(name: str, metric_type: str, documentation: str) -> str:
    """A family's # HELP and # TYPE lines, in the text format's names for its type."""
    text_type, suffix = _TEXT_TYPE.get(metric_type, (metric_type, ""))
    escaped = _escaped_name(name + suffix)
    return f"# HELP {escaped} {_help(documentation)}\n# TYPE {escaped} {text_type}\n"


@_ONCE
def _row_format(sample_name: str,
                names: tuple[str, ...]) -> tuple[str, Callable[[tuple[str, ...]], tuple[str, ...]]]:
    """A family's line format up to its value, and what picks its label values from a row in
    the order the format wants them."""
    ordered, labels_fmt = _label_format(names)
    order = [names.index(n) for n in ordered]  # where each sorted name sits in a row
    pick: Callable[[tuple[str, ...]], tuple[str, ...]] = (
        itemgetter(*order) if len(order) > 1 else lambda labels: (labels[0],))
    return _escaped_name(sample_name) + labels_fmt, pick


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


def _samples(metric: Metric, values: _EscapedValues, floats: _GoFloats,
             output: list[str]) -> dict[str, list[str]]:
    """Appends the family's sample lines to output; returns the OpenMetrics-only ones, which
    the text format puts after the family, by suffix. The loop every sample goes through."""
    openmetrics_only: dict[str, list[str]] = {}
    suffix_of = {metric.name + s: s for s in _OPENMETRICS_SUFFIXES}
    escape, go, append = values.__getitem__, floats.__getitem__, output.append
    for sample in metric.samples:
        name, labels, value, timestamp = sample[0], sample[1], sample[2], sample[3]
        escaped = _escaped_name(name)
        if labels:
            ordered, fmt = _label_format(tuple(labels))
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


def _rows(family: MetricFamily, values: _EscapedValues, floats: _GoFloats,
          output: list[str]) -> None:
    """Appends the lines of a family kept as rows: the label names, their order and their
    escaping are the family's, decided once for all its rows."""
    escape, go, append = values.__getitem__, floats.__getitem__, output.append
    names = family.labelnames
    if not names:
        name = _escaped_name(family.sample_name)
        for _, value in family.rows:
            append(f"{name} {go(value)}\n")
        return
    fmt, pick = _row_format(family.sample_name, names)
    for labels, value in family.rows:
        raw = pick(labels)
        joined = "".join(raw)  # one scan for the three characters that need escaping
        if '"' in joined or "\\" in joined or "\n" in joined:
            raw = tuple(map(escape, raw))
        append(f"{fmt % raw} {go(value)}\n")


def render(metrics: Iterable[Metric]) -> bytes:
    """The families in the Prometheus text format, as generate_latest(registry) renders them."""
    values = _EscapedValues()
    floats = _GoFloats()
    output: list[str] = []
    for metric in metrics:
        output.append(_header(metric.name, metric.type, metric.documentation))
        if isinstance(metric, MetricFamily):
            _rows(metric, values, floats, output)
            continue
        openmetrics_only = _samples(metric, values, floats, output)
        for om_suffix, lines in sorted(openmetrics_only.items()):
            output.append(_header(metric.name + om_suffix, "gauge", metric.documentation))
            output.extend(lines)
    return "".join(output).encode("utf-8")
